"""Models, by name. Every model is `head(body(x))`: `body` is the representation, `head` the classifier.

Decoupling algorithms (FedPer, FedRep, LG-FedAvg, FedBABU, FedRoD, FedOBP classifier-only)
read the split from the tensor names: everything under `head.` is the classifier. A model is a
function (input_shape, num_classes, **options) -> BodyHead registered with `@model("name")`, here or
in a plugin module (harness.plugins).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn


class BodyHead(nn.Module):
    def __init__(self, body: nn.Module, head: nn.Module):
        super().__init__()
        self.body = body
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def _flat_dim(body: nn.Module, input_shape: tuple[int, ...]) -> int:
    with torch.no_grad():
        return int(body(torch.zeros(1, *input_shape)).shape[1])


MODELS: dict[str, Callable[..., BodyHead]] = {}


def model(name: str) -> Callable[[Callable[..., BodyHead]], Callable[..., BodyHead]]:
    """Register a model builder under `name` (model.name in a spec)."""
    def deco(fn: Callable[..., BodyHead]) -> Callable[..., BodyHead]:
        if name in MODELS and MODELS[name] is not fn:
            raise ValueError(f"model name {name!r} is already registered")
        MODELS[name] = fn
        return fn
    return deco


@model("avgcnn")
def avgcnn(input_shape: tuple[int, ...], num_classes: int) -> BodyHead:
    """The FedOBP/FL-bench reference CNN: conv5x5-32, pool, conv5x5-64, pool, fc-512, classifier.

    On 3x32x32 inputs with 10 classes it has 878,538 parameters, as in the FedOBP paper.
    """
    if len(input_shape) != 3:
        raise ValueError(f"avgcnn needs C x H x W images, but each input has shape {tuple(input_shape)}; "
                         f"use model.name=mlp for tables")
    channels, height, width = input_shape
    if min(height, width) < 16:
        raise ValueError(f"avgcnn needs images of at least 16x16, got {height}x{width}; use model.name=mlp")
    conv = nn.Sequential(
        nn.Conv2d(channels, 32, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
    )
    dim = _flat_dim(conv, input_shape)
    body = nn.Sequential(*conv, nn.Linear(dim, 512), nn.ReLU())
    return BodyHead(body, nn.Linear(512, num_classes))


@model("avgcnn_bn")
def avgcnn_bn(input_shape: tuple[int, ...], num_classes: int) -> BodyHead:
    """avgcnn with BatchNorm after both convolutions and the 512-unit layer (conv-BN-ReLU-pool, fc-BN-ReLU), the
    placement of FedBN's (Li et al. 2021) convolutional models; what FedBN keeps local. 879,754 parameters and
    1,216 running statistics on 3x32x32 inputs with 10 classes."""
    channels, height, width = input_shape
    if min(height, width) < 16:
        raise ValueError(f"avgcnn_bn needs images of at least 16x16, got {height}x{width}; use model.name=mlp")
    conv = nn.Sequential(
        nn.Conv2d(channels, 32, 5), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 5), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
    )
    dim = _flat_dim(conv.eval(), input_shape)
    body = nn.Sequential(*conv.train(), nn.Linear(dim, 512), nn.BatchNorm1d(512), nn.ReLU())
    return BodyHead(body, nn.Linear(512, num_classes))


@model("mlp")
def mlp(input_shape: tuple[int, ...], num_classes: int, hidden: int = 128, batchnorm: bool = False) -> BodyHead:
    """Two hidden ReLU layers; the default for small inputs such as the 8x8 digits. `batchnorm=True` puts a
    BatchNorm1d before each ReLU (Linear-BN-ReLU), a model FedBN can run on tables and tiny images."""
    dim = 1
    for d in input_shape:
        dim *= d

    def block(n_in: int) -> list[nn.Module]:
        return [nn.Linear(n_in, hidden), *([nn.BatchNorm1d(hidden)] if batchnorm else []), nn.ReLU()]

    body = nn.Sequential(nn.Flatten(), *block(dim), *block(hidden))
    return BodyHead(body, nn.Linear(hidden, num_classes))


@model("resnet18")
def resnet18(input_shape: tuple[int, ...], num_classes: int) -> BodyHead:
    """torchvision ResNet-18 adapted to small images: 3x3 stem with stride 1, no max-pool."""
    if len(input_shape) != 3:
        raise ValueError(f"resnet18 needs C x H x W images, but each input has shape {tuple(input_shape)}; "
                         f"use model.name=mlp for tables")
    import torchvision  # lazily: importing it costs ~1-4 s (torch._dynamo), every run and worker paid it

    net = torchvision.models.resnet18(weights=None, num_classes=num_classes)
    net.conv1 = nn.Conv2d(input_shape[0], 64, kernel_size=3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    head = net.fc
    net.fc = nn.Identity()
    return BodyHead(net, head)


def _small_image_resnet(net: nn.Module, input_shape: tuple[int, ...], name: str) -> BodyHead:
    if len(input_shape) != 3:
        raise ValueError(f"{name} needs C x H x W images, but each input has shape {tuple(input_shape)}")
    net.conv1 = nn.Conv2d(input_shape[0], 64, kernel_size=3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    head, net.fc = net.fc, nn.Identity()
    return BodyHead(net, head)


@model("resnet34")
def resnet34(input_shape: tuple[int, ...], num_classes: int) -> BodyHead:
    """torchvision ResNet-34 adapted to 32x32 images like resnet18 (3x3 stem, stride 1, no max-pool)."""
    import torchvision

    return _small_image_resnet(torchvision.models.resnet34(weights=None, num_classes=num_classes), input_shape,
                               "resnet34")


@model("mobilenetv2")
def mobilenetv2(input_shape: tuple[int, ...], num_classes: int, width: float = 1.0) -> BodyHead:
    """torchvision MobileNetV2 for small images: the first convolution gets stride 1 (as the CIFAR variants of
    the literature do) and the input's channels; the final linear layer is the head (its dropout ends the body)."""
    if len(input_shape) != 3:
        raise ValueError(f"mobilenetv2 needs C x H x W images, but each input has shape {tuple(input_shape)}")
    import torchvision

    net = torchvision.models.mobilenet_v2(weights=None, num_classes=num_classes, width_mult=width)
    first = net.features[0][0]
    net.features[0][0] = nn.Conv2d(input_shape[0], first.out_channels, 3, stride=1, padding=1, bias=False)
    dropout, linear = net.classifier  # torchvision: Dropout(0.2), Linear
    body = nn.Sequential(net.features, nn.AdaptiveAvgPool2d(1), nn.Flatten(), dropout)
    return BodyHead(body, linear)


@model("logreg")
def logreg(input_shape: tuple[int, ...], num_classes: int) -> BodyHead:
    """Multinomial logistic regression (the LEAF / FedProx convex baseline): the body only flattens, so every
    parameter is the head (decoupling algorithms that need a shared body refuse it)."""
    return BodyHead(nn.Flatten(), nn.Linear(int(np.prod(input_shape)), num_classes))


@model("dnn")
def dnn(input_shape: tuple[int, ...], num_classes: int, hidden: int = 200) -> BodyHead:
    """The 2-layer DNN of McMahan et al. 2017 (two hidden ReLU layers of 200 units on MNIST)."""
    body = nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(input_shape)), hidden), nn.ReLU(),
                         nn.Linear(hidden, hidden), nn.ReLU())
    return BodyHead(body, nn.Linear(hidden, num_classes))


@model("lenet5")
def lenet5(input_shape: tuple[int, ...], num_classes: int) -> BodyHead:
    """LeNet-5 (LeCun et al. 1998) as the FL literature runs it on MNIST/FEMNIST/CIFAR (ReLU and max-pooling in
    place of the paper's scaled tanh and subsampling): conv5x5-6 (padding 2), pool, conv5x5-16, pool, fc-120,
    fc-84, then the classifier head. 61,706 parameters on 1x28x28 with 10 classes (LeCun's 60k on 32x32).
    Inputs of 8x8 to 15x15 get a 3x3 second convolution, as docs/examples/my_lenet5.py does."""
    if len(input_shape) != 3:
        raise ValueError(f"lenet5 needs C x H x W images, but each input has shape {tuple(input_shape)}; "
                         f"use model.name=mlp for tables")
    channels, height, width = input_shape
    if min(height, width) < 8:
        raise ValueError(f"lenet5 needs images of at least 8x8, got {height}x{width}; use model.name=mlp")
    conv = nn.Sequential(nn.Conv2d(channels, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(6, 16, 3 if min(height, width) < 16 else 5), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten())
    body = nn.Sequential(*conv, nn.Linear(_flat_dim(conv, input_shape), 120), nn.ReLU(), nn.Linear(120, 84),
                         nn.ReLU())
    return BodyHead(body, nn.Linear(84, num_classes))


class _TokenLSTM(nn.Module):
    """Token ids (N, T) -> embedding -> stacked LSTM -> the last step's output (N, hidden)."""

    def __init__(self, vocab_size: int, embedding: int, hidden: int, layers: int):
        super().__init__()
        self.vocab_size = vocab_size
        self.embed = nn.Embedding(vocab_size, embedding)
        self.lstm = nn.LSTM(embedding, hidden, num_layers=layers, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the trainer hands inputs over as float (ids < 2^24 are exact) after (x - 0) / 1: back to ids
        out, _ = self.lstm(self.embed(x.long()))
        return out[:, -1]


@model("char_lstm")
def char_lstm(input_shape: tuple[int, ...], num_classes: int, vocab_size: int | None = None, embedding: int = 8,
              hidden: int = 256, layers: int = 2) -> BodyHead:
    """The LEAF / FedProx Shakespeare model (Caldas et al. 2018; Li et al. 2020, Sec. 5.1; LEAF's
    models/shakespeare/stacked_lstm.py): an embedding of 8 per character, a 2-layer LSTM of 256 units, the
    last step's output into a linear classifier (the head) over the next character. Inputs are token ids
    (N, T) as the `shakespeare` and `sent140` sources deliver them; `vocab_size` defaults to num_classes
    (next-character prediction: the 80 LEAF characters). For `sent140` set vocab_size to 10,001 (its word
    ids), and e.g. embedding 300, hidden 100 for LEAF's Sent140 LSTM shape (without its GloVe weights)."""
    if len(input_shape) != 1:
        raise ValueError(f"char_lstm needs token sequences (N, T), but each input has shape {tuple(input_shape)}; "
                         f"use data.source=shakespeare or sent140")
    body = _TokenLSTM(int(vocab_size or num_classes), embedding, hidden, layers)
    return BodyHead(body, nn.Linear(hidden, num_classes))


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int, **options) -> BodyHead:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(sorted(MODELS))}")
    net = MODELS[name](tuple(input_shape), num_classes, **options)
    if not isinstance(net, BodyHead):
        raise ValueError(f"model {name!r} must return a harness.models.BodyHead (body + head), "
                         f"got {type(net).__name__}")
    return net
