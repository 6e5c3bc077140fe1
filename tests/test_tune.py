"""`fedharness tune` (harness.tuning): one budget for every algorithm, selection on validation only (a spy in
every process counts the examples each evaluation reads, per split), resumable after a kill, reproducible."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.config import ConfigError
from harness.tuning.spec import load_tune

ROOT = Path(__file__).resolve().parents[1]

SPY = '''
import os, time
from harness.engine.training import LocalTrainer

LOG, HANG = {log!r}, {hang!r}
_evaluate = LocalTrainer.evaluate


def _trial():
    try:
        from ray import tune
        return tune.get_context().get_trial_id() or "-"
    except Exception:
        return "-"


def evaluate(self, vec, cid, split="test"):
    trial = _trial()
    with open(LOG, "a") as f:
        f.write(f"{{trial}} {{split}} {{len(self.data.split_of(cid, split))}}\\n")
    if os.path.exists(HANG) and trial.endswith("_00002"):
        time.sleep(600)  # the resume test kills the tune while this trial runs
    return _evaluate(self, vec, cid, split)


LocalTrainer.evaluate = evaluate
'''


def spec(tmp_path: Path, **over) -> dict:
    spy = tmp_path / "spy.py"
    tmp_path.mkdir(parents=True, exist_ok=True)
    if not spy.exists():
        spy.write_text(SPY.format(log=str(tmp_path / "reads.log"), hang=str(tmp_path / "hang")))
    base = {
        "seed": 0, "rounds": 2, "join_ratio": 0.5, "eval_every": 1, "plugins": [str(spy)],
        "data": {"source": "digits"},
        "partition": {"scheme": "dirichlet", "num_clients": 6, "alpha": 0.5, "min_samples": 10, "val_fraction": 0.2,
                      "cache_dir": str(tmp_path / "cache")},
        "model": {"name": "mlp", "options": {"hidden": 16}},
        "train": {"local_epochs": 1, "batch_size": 32, "lr": 0.05},
        "workers": {"num_workers": 1, "use_ray": False},
        "tracking": {"uri": f"sqlite:///{tmp_path}/mlflow.db", "enabled": True},
        "checkpoint_dir": str(tmp_path / "ckpt"),
    }
    out = {"name": "t", "base": base, "algorithms": ["fedavg", "ditto"], "budget": {"trials": 3},
           "scheduler": {"grace_rounds": 1, "reduction_factor": 2}, "parallel_trials": 2, "final_seeds": [1],
           "storage": str(tmp_path / "tune"),
           "space": {"all": {"train.local_epochs": ["choice", [1]]}}}
    out.update(over)
    return out


def reads(tmp_path: Path) -> list[tuple[str, str, int]]:
    log = tmp_path / "reads.log"
    lines = log.read_text().split("\n") if log.exists() else []
    return [(a, b, int(c)) for a, b, c in (line.split() for line in lines if line)]


# ----- the budget ---------------------------------------------------------------------------------------------
def test_the_budget_is_one_for_every_algorithm(tmp_path):
    t = load_tune(spec(tmp_path, budget={"client_updates": 40}))
    assert t.trials == 40 // (2 * 3) == 6  # 2 rounds x 3 of 6 clients: a trial's most client-updates
    assert {a: t.updates_per_trial(a) for a in t.configs} == {"fedavg": 6, "ditto": 6}
    with pytest.raises(ConfigError, match="unknown key 'budget.ditto'"):
        load_tune(spec(tmp_path, budget={"trials": 3, "ditto": 5}))  # no per-algorithm budget
    with pytest.raises(ConfigError, match="exactly one of budget.trials or budget.client_updates"):
        load_tune(spec(tmp_path, budget={"trials": 3, "client_updates": 100}))
    for key in ("rounds", "clients_per_round", "partition.alpha", "data.max_samples", "eval_every"):
        with pytest.raises(ConfigError, match=f"may not change {key}"):  # a space must not buy one more budget
            load_tune(spec(tmp_path, space={"ditto": {key: ["choice", [1, 2]]}}))
    with pytest.raises(ConfigError, match="less than one trial"):
        load_tune(spec(tmp_path, budget={"client_updates": 5}))


def test_a_tune_needs_validation_data_and_fresh_final_seeds(tmp_path):
    bad = spec(tmp_path)
    bad["base"]["partition"]["val_fraction"] = 0.0
    with pytest.raises(ConfigError, match="val_fraction must be > 0"):
        load_tune(bad)
    with pytest.raises(ConfigError, match="must be fresh"):
        load_tune(spec(tmp_path, final_seeds=[0, 1]))
    with pytest.raises(ConfigError, match="has no hyperparameter|not one of its hyperparameters|is not one of"):
        load_tune(spec(tmp_path, space={"ditto": {"algorithm.ditto.nope": ["choice", [1]]}}))


def test_search_spaces_are_declared_for_the_papers_hyperparameters():
    from algorithms.search_spaces import space_of

    assert set(space_of("fedavg")) == {"train.lr", "train.local_epochs"}
    assert space_of("ditto")["algorithm.ditto.lam"] == ("choice", [0.05, 0.1, 0.2, 1.0, 2.0])
    assert space_of("fedprox")["algorithm.fedprox.mu"] == ("choice", [0.001, 0.01, 0.1, 1.0])
    assert "algorithm.fedobp.q" in space_of("fedobp") and "algorithm.fedrep.head_epochs" in space_of("fedrep")


# ----- a whole tune (Ray Tune trials in Ray worker processes: ~1 min on a quiet 2-core machine) ------------------
@pytest.mark.slow
def test_tuning_reads_no_test_split_selects_on_validation_and_is_reproducible(tmp_path, ray_session):
    from harness.tracking import mlflow_client
    from harness.tuning.report import leaderboard, to_markdown
    from harness.tuning.runner import run_tune

    t = load_tune(spec(tmp_path))
    outcome = run_tune(t, progress=False)

    # every algorithm got exactly the budget, each trial at most its rounds x clients
    for algorithm, r in outcome.searches.items():
        assert len(r.trials) == 3 and len({x["trial_id"] for x in r.trials}) == 3
        assert all(0 < x["client_updates"] <= t.updates_per_trial(algorithm) for x in r.trials)
    # the search read validation splits and not one test example; the final runs did read test data
    trial_reads = [(split, n) for trial, split, n in reads(tmp_path) if trial != "-"]
    assert any(split == "val" and n > 0 for split, n in trial_reads)
    assert not [n for split, n in trial_reads if split == "test" and n > 0]
    assert any(split == "test" and n > 0 for trial, split, n in reads(tmp_path) if trial == "-")

    # every trial an MLflow run nested under its algorithm's tuning run, with validation metrics only
    client = mlflow_client(t.configs["fedavg"].tracking.uri)
    exp = client.get_experiment_by_name("t")
    for r in outcome.searches.values():
        kids = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{r.parent_run_id}'")
        assert len(kids) == 3 and all("personal_val_acc" in k.data.metrics for k in kids)
        assert not any("personal_acc" in k.data.metrics for k in kids)
        status = {x["trial_id"]: x["status"] for x in r.trials}
        for k in kids:  # a trial ASHA stopped is KILLED and tagged pruned, never FINISHED
            pruned = status[k.data.tags["fedharness.tune.trial_id"]] == "pruned"
            assert k.info.status == ("KILLED" if pruned else "FINISHED")
            assert k.data.tags.get("fedharness.tune.pruned", "false") == str(pruned).lower()
        finished = [x for x in r.trials if x["status"] == "finished"]
        assert r.selected == max(finished, key=lambda x: x["val"])["config"]  # argmax of validation

    table = leaderboard(t, outcome)
    assert list(table["algorithm"]) and set(table["algorithm"]) == {"fedavg", "ditto"}
    assert "client-updates" in to_markdown(t, table) and table["n"].min() == 1

    # the same sampler seed gives the same trial configurations; another seed, others
    def configs(seed: int, where: str) -> list[dict]:
        again = load_tune(spec(tmp_path / where, algorithms=["ditto"], search_seed=seed))
        return [x["config"] for x in run_tune(again, progress=False, search_only=True).searches["ditto"].trials]

    first = [x["config"] for x in outcome.searches["ditto"].trials]
    assert configs(0, "same") == first
    assert configs(1, "other") != first


@pytest.mark.slow
def test_a_killed_tune_resumes_without_rerunning_finished_trials(tmp_path):
    tree = spec(tmp_path, algorithms=["fedavg"], parallel_trials=1)
    (tmp_path / "t.json").write_text(json.dumps(tree))  # JSON is YAML
    (tmp_path / "hang").touch()  # the third trial hangs in its first evaluation
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TUNE_GLOBAL_CHECKPOINT_S": "0"}
    cmd = [sys.executable, "-m", "harness.cli", "tune", str(tmp_path / "t.json"), "--search-only", "--quiet"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    deadline = time.time() + 240
    while not any(trial.endswith("_00002") for trial, _, _ in reads(tmp_path)):
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.time() < deadline, "the third trial never started"
        time.sleep(0.5)
    time.sleep(2)  # the hung trial is in its sleep; the two before it finished and were saved
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = {trial for trial, _, _ in reads(tmp_path) if trial != "-"}
    assert any(t.endswith("_00000") for t in before) and any(t.endswith("_00001") for t in before)
    (tmp_path / "hang").unlink()
    (tmp_path / "reads.log").write_text("")

    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    after = {trial for trial, _, _ in reads(tmp_path) if trial != "-"}
    assert all(t.endswith("_00002") for t in after) and after  # only the unfinished trial ran again
    assert "3 trials" in done.stdout
