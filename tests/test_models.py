"""Models: the reference sizes, the body/head split every decoupling algorithm reads, exact vector round trips."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from harness.models import MODELS, build_model
from protocol.params import ParamSpec, model_to_vector, vector_to_model

SHAPES = {"avgcnn": [(3, 32, 32), (1, 28, 28)], "avgcnn_bn": [(3, 32, 32), (1, 28, 28)],
          "resnet34": [(3, 32, 32)], "mobilenetv2": [(3, 32, 32), (1, 28, 28)], "logreg": [(1, 28, 28)],
          "dnn": [(1, 28, 28)], "mlp": [(1, 8, 8), (3, 32, 32)], "resnet18": [(3, 32, 32)],
          "lenet5": [(1, 28, 28), (3, 32, 32), (1, 8, 8)], "char_lstm": [(80,)]}
CASES = [(name, shape) for name, shapes in SHAPES.items() for shape in shapes]


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_avgcnn_has_the_papers_878538_parameters_on_cifar10():
    model = build_model("avgcnn", (3, 32, 32), 10)
    # conv5x5 3->32, conv5x5 32->64, fc 64*5*5->512, classifier 512->10
    assert n_params(model) == (3 * 32 * 25 + 32) + (32 * 64 * 25 + 64) + (1600 * 512 + 512) + (512 * 10 + 10)
    assert n_params(model) == 878_538
    assert ParamSpec.of(model).size == 878_538  # no float buffers
    convs = [m for m in model.body.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [(3, 32, (5, 5)), (32, 64, (5, 5))]
    assert [type(m) for m in model.body if isinstance(m, nn.MaxPool2d)] == [nn.MaxPool2d, nn.MaxPool2d]
    assert (model.head.in_features, model.head.out_features) == (512, 10)


def test_avgcnn_on_28x28_grey_and_refuses_tiny_images():
    model = build_model("avgcnn", (1, 28, 28), 62)  # EMNIST byclass: 28 -> 24 -> 12 -> 8 -> 4
    assert model.body[7].in_features == 64 * 4 * 4
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 62)
    with pytest.raises(ValueError, match="at least 16x16"):
        build_model("avgcnn", (1, 8, 8), 10)


def test_mlp_sizes():
    model = build_model("mlp", (1, 8, 8), 10, hidden=32)
    assert n_params(model) == (64 * 32 + 32) + (32 * 32 + 32) + (32 * 10 + 10)
    assert model(torch.zeros(3, 1, 8, 8)).shape == (3, 10)


def test_resnet18_is_adapted_to_small_images():
    model = build_model("resnet18", (3, 32, 32), 10)
    stem = model.body.conv1
    assert (stem.kernel_size, stem.stride, stem.padding) == ((3, 3), (1, 1), (1, 1))
    assert isinstance(model.body.maxpool, nn.Identity) and isinstance(model.body.fc, nn.Identity)
    # torchvision's ResNet-18 (11,689,512 with 1000 classes) with a 10-class head and a 3x3 stem
    assert n_params(model) == 11_689_512 - (512 * 990 + 990) - 3 * 64 * (49 - 9) == 11_173_962
    model.eval()
    with torch.no_grad():
        features = model.body(torch.zeros(2, 3, 32, 32))
    assert features.shape == (2, 512)
    spec = ParamSpec.of(model)
    assert spec.size > n_params(model)  # BatchNorm running statistics travel with the model
    assert not any(s.name.endswith("num_batches_tracked") for s in spec.slots)  # integer buffers do not
    assert build_model("resnet18", (1, 28, 28), 62)(torch.zeros(2, 1, 28, 28)).shape == (2, 62)


def test_unknown_model_lists_the_choices():
    with pytest.raises(ValueError, match="unknown model 'vgg'.*avgcnn"):
        build_model("vgg", (3, 32, 32), 10)


@pytest.mark.parametrize(("name", "shape"), CASES)
def test_every_model_names_its_head_and_the_head_is_the_last_linear(name, shape):
    if name == "logreg":
        pytest.skip("logistic regression is all head by definition (test_dnn_has_mcmahan_2nn_size_and_logreg...)")
    model = build_model(name, shape, 10)
    spec = ParamSpec.of(model)
    assert spec.head_names() == ["head.weight", "head.bias"]
    assert spec.body_names() and all(n.startswith("body.") for n in spec.body_names())
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    assert linears[-1] == "head"
    assert model.head.out_features == 10
    head = spec.head_mask()
    assert head.sum() == model.head.weight.numel() + model.head.bias.numel()
    assert head[-int(head.sum()):].all()  # the classifier is the tail of the flat vector
    groups = spec.layer_groups()
    assert [s.name for s in groups[-1]] == ["head.weight", "head.bias"]


@pytest.mark.parametrize(("name", "shape"), CASES)
def test_vector_round_trip_is_exact(name, shape):
    torch.manual_seed(0)
    a = build_model(name, shape, 10)
    if name == "resnet18":  # make the BatchNorm buffers non-trivial too
        a.train()
        with torch.no_grad():
            a(torch.randn(4, *shape))
    spec = ParamSpec.of(a)
    vec = model_to_vector(a, spec)
    assert vec.dtype == np.float32 and vec.shape == (spec.size,)
    torch.manual_seed(1)
    b = build_model(name, shape, 10)
    assert not np.array_equal(model_to_vector(b, spec), vec)
    vector_to_model(vec, b, spec)
    np.testing.assert_array_equal(model_to_vector(b, spec), vec)
    for (ka, ta), (kb, tb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb
        if torch.is_floating_point(ta):  # num_batches_tracked (an integer counter) is not model state
            assert torch.equal(ta, tb), ka
    a.eval()
    b.eval()
    x = torch.randint(0, 10, (2, *shape)).float() if name == "char_lstm" else torch.randn(2, *shape)  # token ids
    with torch.no_grad():
        assert torch.equal(a(x), b(x))
    with pytest.raises(ValueError, match="vector has shape"):
        vector_to_model(vec[:-1], b, spec)


def test_registry_of_models_is_what_the_tests_cover():
    assert set(MODELS) == set(SHAPES)


def test_dnn_has_mcmahan_2nn_size_and_logreg_is_all_head():
    assert n_params(build_model("dnn", (1, 28, 28), 10)) == 199_210  # McMahan et al. 2017's 2NN
    spec = ParamSpec.of(build_model("logreg", (1, 28, 28), 10))
    assert spec.size == 7_850 and spec.head_mask().all()


def test_lenet5_sizes_and_the_plugin_example_is_the_same_network():
    model = build_model("lenet5", (1, 28, 28), 10)
    # conv5x5 1->6 (pad 2), conv5x5 6->16, fc 16*5*5->120, fc 120->84, classifier 84->10
    assert n_params(model) == 156 + 2_416 + (400 * 120 + 120) + (120 * 84 + 84) + (84 * 10 + 10) == 61_706
    assert model(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "docs" / "examples" / "my_lenet5.py"
    spec = importlib.util.spec_from_file_location("my_lenet5_example", path)
    example = importlib.util.module_from_spec(spec)
    saved = MODELS.pop("my_lenet5", None)  # another test may have loaded the plugin already
    spec.loader.exec_module(example)
    try:
        torch.manual_seed(0)
        ours = build_model("lenet5", (3, 32, 32), 10)
        torch.manual_seed(0)
        theirs = build_model("my_lenet5", (3, 32, 32), 10)
        x = torch.randn(2, 3, 32, 32)
        with torch.no_grad():
            assert torch.equal(ours(x), theirs(x))
    finally:
        MODELS.pop("my_lenet5", None)
        if saved is not None:
            MODELS["my_lenet5"] = saved
    with pytest.raises(ValueError, match="lenet5 needs C x H x W images"):
        build_model("lenet5", (60,), 10)


def test_char_lstm_is_leafs_shakespeare_model():
    model = build_model("char_lstm", (80,), 80)
    lstm = model.body.lstm
    assert (model.body.embed.num_embeddings, model.body.embed.embedding_dim) == (80, 8)
    assert (lstm.input_size, lstm.hidden_size, lstm.num_layers, lstm.batch_first) == (8, 256, 2, True)
    per_layer = lambda n_in: 4 * 256 * (n_in + 256) + 2 * 4 * 256  # noqa: E731  (W_ih, W_hh, two biases)
    assert n_params(model) == 80 * 8 + per_layer(8) + per_layer(256) + (256 * 80 + 80) == 819_920
    ids = torch.randint(0, 80, (3, 80))
    out = model(ids.float())  # the trainer hands token ids over as float
    assert out.shape == (3, 80)
    with torch.no_grad():  # the prediction reads the last step's output of the top layer
        full, _ = lstm(model.body.embed(ids))
        assert torch.allclose(model.head(full[:, -1]), out)
    words = build_model("char_lstm", (25,), 2, vocab_size=10_001, embedding=300, hidden=100)
    assert words.body.embed.num_embeddings == 10_001 and words.head.out_features == 2
    with pytest.raises(ValueError, match="char_lstm needs token sequences"):
        build_model("char_lstm", (1, 28, 28), 10)
