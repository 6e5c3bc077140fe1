"""The logged runs' protocol: FedOBP's q schedule, FedRep's 4+1 split, LG-FedAvg's bottom-global variant,
the sampled-client before/after metric, and the fine-tune evaluation (issue: reproduce the FedOBP table)."""

from __future__ import annotations

import numpy as np
import pytest

from algorithms.base import AlgoContext, ClientJob
from algorithms.fedobp import FedOBP, FedOBPParams, num_personal, scheduled_q
from algorithms.fedrep import FedRep, FedRepParams
from algorithms.lgfedavg import LGFedAvg, LGFedAvgParams
from harness.engine import open_run, run
from harness.engine.worker import Worker
from harness.models import build_model
from protocol.params import ParamSpec
from protocol.specs import TrainSpec
from tests.conftest import metrics_history, small_config


def _ctx(model, **train):
    return AlgoContext(spec=ParamSpec.of(model), train=TrainSpec(**train), num_clients=4, num_classes=3, seed=0)


# ----- FedOBP: the q schedule ------------------------------------------------------------------------------
def test_linear_q_schedule_value_per_round():
    # the logged config: init 0.0, last 0.9999, 400 rounds
    assert scheduled_q(0, 0.0, 0.9999, 400) == 0.0
    assert scheduled_q(399, 0.0, 0.9999, 400) == pytest.approx(0.9999, abs=1e-15)
    assert scheduled_q(1000, 0.0, 0.9999, 400) == pytest.approx(0.9999, abs=1e-15)  # stays at last
    assert scheduled_q(133, 0.0, 0.9999, 400) == pytest.approx(0.9999 * 133 / 399)
    assert scheduled_q(5, 0.2, 0.8, 1) == 0.8  # a one-round schedule is at its end at once


def test_linear_q_schedule_sets_the_personal_count_of_each_round():
    model = build_model("mlp", (1, 4, 4), 3, hidden=5)  # 133 elements
    fixed = FedOBP(FedOBPParams(q=0.9), _ctx(model))
    sched = FedOBP(FedOBPParams(q=0.9, q_schedule="linear", q_init=0.0, q_rounds=11), _ctx(model))
    assert [fixed.personal_count(r) for r in (0, 5, 10)] == [num_personal(133, 0.9)] * 3
    assert [sched.personal_count(r) for r in (0, 5, 10, 20)] == [133, num_personal(133, 0.45), 13, 13]
    # server_prepare follows it: round 0 keeps every element of theta_k (Local-like), round 10 only 13
    rng = np.random.default_rng(0)
    g = rng.standard_normal(133).astype(np.float32)
    theta = rng.standard_normal(133).astype(np.float32)
    for rnd, expect in ((0, 133), (10, 13)):
        sent = sched.server_prepare(0, rnd, g, {"theta": theta})
        assert int(np.count_nonzero(sent.payload["model"] == theta)) == expect
        assert sched.round_metrics({0: sent.note})["fedobp_q"] == pytest.approx(scheduled_q(rnd, 0.0, 0.9, 11))


def test_fixed_q_is_the_default_and_unchanged_by_the_schedule_fields():
    model = build_model("mlp", (1, 4, 4), 3, hidden=5)
    a = FedOBP(FedOBPParams(q=0.95), _ctx(model))
    b = FedOBP(FedOBPParams(q=0.95, q_init=0.3, q_rounds=7), _ctx(model))  # schedule fields, fixed mode
    assert a.params.q_schedule == "fixed"
    assert [a.personal_count(r) for r in range(10)] == [b.personal_count(r) for r in range(10)]


# ----- FedRep 4 + 1 -------------------------------------------------------------------------------------------
def test_fedrep_logged_split_is_4_head_plus_1_body_epochs_of_5():
    model = build_model("mlp", (1, 4, 4), 3, hidden=5)
    logged = FedRep(FedRepParams(head_epochs=None, body_epochs=1), _ctx(model, local_epochs=5))
    assert logged.epochs() == (4, 1)
    assert FedRep(FedRepParams(), _ctx(model, local_epochs=5)).epochs() == (10, 1)  # the paper's default


def test_fedrep_4_plus_1_runs_that_many_steps_per_phase(tmp_path):
    cfg = small_config(tmp_path, "algorithm.name=fedrep", "algorithm.head_epochs=null", "algorithm.body_epochs=1",
                       "train.local_epochs=5", "rounds=1")
    result = run(cfg, progress=False)
    h = result.history[0]
    assert h["client_head_steps_mean"] == pytest.approx(4 * h["client_body_steps_mean"])


# ----- LG-FedAvg, bottom layer global --------------------------------------------------------------------------
def test_lgfedavg_bottom_variant_averages_exactly_the_first_layer():
    model = build_model("avgcnn", (3, 32, 32), 10)
    spec = ParamSpec.of(model)
    algo = LGFedAvg(LGFedAvgParams(global_part="bottom"), _ctx(model))
    first = spec.layer_groups()[0]
    assert [s.name for s in first] == ["body.0.weight", "body.0.bias"]  # conv5x5-32: 2,432 elements
    assert sum(s.size for s in first) == 3 * 32 * 25 + 32
    expect = np.zeros(spec.size, dtype=bool)
    for s in first:
        expect[s.start:s.stop] = True
    assert np.array_equal(algo.shared, expect)
    # aggregation: only the first layer moves to the average; every other element keeps its global value
    from algorithms.base import ClientUpdate

    g = np.zeros(spec.size, dtype=np.float32)
    ups = [ClientUpdate(cid=c, num_samples=n, upload={"model": np.full(spec.size, v, np.float32)}, state={})
           for c, n, v in ((0, 1, 1.0), (1, 3, 5.0))]
    new = algo.aggregate(g, ups, {})
    assert np.all(new[expect] == 4.0) and np.all(new[~expect] == 0.0)
    top = LGFedAvg(LGFedAvgParams(), _ctx(model))  # the paper's direction: the classifier is global
    assert top.shared[spec.head_mask()].all() and not top.shared[expect].any()


# ----- sampled-client before/after -------------------------------------------------------------------------------
def test_sampled_before_after_equals_a_hand_computation(tmp_path):
    cfg = small_config(tmp_path, "algorithm.name=fedper", "eval_sampled=true", "rounds=2")
    result = run(cfg, progress=False)
    # hand computation: replay round 2 with the engine's own pieces, evaluate each sampled client by hand
    engine = open_run(cfg, progress=False)
    worker = Worker(cfg.model_dump(mode="json"), engine.data)
    algo, trainer = worker.algo, worker.trainer
    rounds = []
    for rnd in range(2):
        sampled = engine.clock.sample(rnd, engine.data.train_clients, engine.k)
        correct_before = correct_after = total = 0
        updates = []
        for cid in sorted(int(c) for c in sampled):
            sent = algo.server_prepare(cid, rnd, engine.global_vec, engine.store.get_many([cid])[cid])
            payload, state = sent.payload, sent.state
            job = ClientJob(cid, rnd, payload, state)
            start = algo.merge_personal(payload["model"], state.get("personal"))
            c, _, n = trainer.evaluate(start, cid)
            correct_before += c
            total += n
            trainer.start(job)
            u = algo.local_update(job, trainer)
            c, _, _ = trainer.evaluate(u.upload["model"], cid)  # FedPer after training: the trained model
            correct_after += c
            updates.append(u)
        engine.global_vec = algo.aggregate(engine.global_vec, updates)
        engine.store.commit({u.cid: u.state for u in updates}, rnd)
        rounds.append((correct_before / total, correct_after / total))
    for h, (before, after) in zip(result.history, rounds, strict=True):
        assert h["sampled_acc_before"] == before
        assert h["sampled_acc_after"] == after
    assert rounds[1][0] != rounds[1][1]


@pytest.mark.parametrize("algorithm", ["fedavg", "local", "fedper", "fedrep", "lgfedavg", "fedbabu", "ditto", "apfl",
                                       "fedala", "fedrod", "fedprox", "fedobp"])
def test_sampled_eval_changes_no_training_number(tmp_path, algorithm):
    over = [f"algorithm.name={algorithm}", "rounds=2", "eval_every=2"]
    over += ["algorithm.q=0.9"] if algorithm == "fedobp" else []
    off = run(small_config(tmp_path / "a", *over), progress=False)
    on = run(small_config(tmp_path / "b", *over, "eval_sampled=true"), progress=False)
    extra = ("wall_round_time", "sampled_acc_before", "sampled_acc_after")
    assert metrics_history(off) == metrics_history(on, drop=extra)
    assert all(0 <= h["sampled_acc_before"] <= 1 for h in on.history)


# ----- fine-tune evaluation ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("algorithm", ["fedavg", "fedper", "fedobp"])
def test_finetune_evaluation_leaves_stored_state_and_numbers_untouched(tmp_path, algorithm):
    plain = run(small_config(tmp_path / "a", f"algorithm.name={algorithm}"), progress=False)
    ft = run(small_config(tmp_path / "b", f"algorithm.name={algorithm}", "eval_finetune_epochs=2"), progress=False)
    ft_keys = tuple(k for k in ft.history[-1] if k.startswith("personal_ft_")) + ("wall_round_time",)
    assert "personal_ft_acc" in ft.history[-1] and "personal_ft_acc" not in plain.history[-1]
    # the training trajectory and the non-fine-tuned metrics are exactly those of a run without it
    assert metrics_history(plain) == metrics_history(ft, drop=ft_keys)
    assert np.array_equal(plain.global_vec, ft.global_vec)
    # fine-tuning on local data changes the accuracy (it really trained) and is reported per client
    assert ft.history[-1]["personal_ft_acc"] != ft.history[-1]["personal_acc"]
    assert "personal_ft_acc" in ft.clients.columns
    assert ft.final["best_personal_ft_acc"] >= ft.history[-1]["personal_ft_acc"]
