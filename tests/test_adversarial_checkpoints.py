"""An adversarial user's checkpoints: tampered, truncated, swapped, finished, moved, killed at bad moments.

Every tampered checkpoint is refused by `fedharness resume` with exit code 2 and one line naming the
file, no traceback, and *nothing changes*: the MLflow run keeps its status, tags and metrics, and the
checkpoint folder its bytes. The runs that must survive (killed while starting, Ctrl-C, replayed
rounds, a moved checkpoint, a damaged partition cache) resume to the numbers of an uninterrupted run,
without duplicated MLflow metrics. docs/reliability.md has the table.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from harness.config import load_config
from harness.engine import run
from harness.engine.checkpoint import META, Checkpoint, file_sha256, read_meta
from harness.engine.executor import InProcessExecutor
from tests.conftest import ROOT, metrics_history
from tests.test_adversarial_input import cli, fresh_mlflow_db, mlflow_runs, one_error, spec_file

# ----- a paused run to tamper with (4 rounds, stopped after 2: RUNNING, resumable) ---------------------------


@pytest.fixture(scope="module")
def paused(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("paused")
    cfg = load_config(spec_file(tmp, rounds=4))
    result = run(cfg, progress=False, stop_after=2)
    return tmp, result.run_id


@pytest.fixture
def victim(paused, tmp_path):
    """A copy of the paused run's checkpoint under tmp_path/ckpt, its state folder, and how to check that a
    refused resume changed nothing."""
    tmp, run_id = paused
    folder = tmp_path / "ckpt" / run_id
    shutil.copytree(tmp / "ckpt" / run_id, folder)
    meta = json.loads((folder / META).read_text())
    return Victim(run_id, folder, folder / meta["state"], f"sqlite:///{tmp}/mlflow.db")


class Victim:
    def __init__(self, run_id: str, folder: Path, state: Path, uri: str):
        self.run_id, self.folder, self.state, self.uri = run_id, folder, state, uri

    def meta(self) -> dict:
        return json.loads((self.folder / META).read_text())

    def write_meta(self, meta) -> None:
        (self.folder / META).write_text(json.dumps(meta))

    def recommit(self, **changes) -> None:
        """Rewrite meta.json with a valid checksum (what a careful forger, or another program, would write)."""
        meta = {k: v for k, v in self.meta().items() if k != "checksum"} | changes
        Checkpoint(self.folder)._commit(meta)

    def snapshot(self) -> tuple:
        client = MlflowClient(self.uri)
        mlrun = client.get_run(self.run_id)
        steps = {k: [m.step for m in client.get_metric_history(self.run_id, k)] for k in ("clients_kept",
                                                                                          "personal_acc")}
        files = {str(p.relative_to(self.folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
                 for p in sorted(self.folder.rglob("*"))}
        return mlrun.info.status, mlrun.data.tags, steps, files

    def resume_refused(self, capsys, *names: str, run_id: str | None = None) -> str:
        before = self.snapshot()
        run_id = self.run_id if run_id is None else run_id
        line = one_error(*cli(capsys, "resume", run_id, "--checkpoint-dir", str(self.folder.parent)), *names)
        assert self.snapshot() == before  # MLflow and the checkpoint: nothing changed
        return line


def _npz_without(path: Path, drop: str | None = None, **extra) -> None:
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files if k != drop}
    np.savez(path, **arrays, **extra)


def test_an_untouched_checkpoint_has_a_format_a_checksum_and_every_file_hashed(victim):
    meta = read_meta(victim.folder.parent, victim.run_id)
    assert meta["format"] == 2 and meta["status"] == "RUNNING" and len(meta["checksum"]) == 64
    assert sorted(meta["files"]) == ["global.npy", "store.npz"]
    assert all(file_sha256(victim.state / name) == sha for name, sha in meta["files"].items())
    Checkpoint(victim.folder).verify(meta)
    assert [p.name for p in victim.folder.glob("round-*")] == [victim.state.name]  # older states removed


# ----- meta.json ---------------------------------------------------------------------------------------------
META_CASES = {
    "null": (lambda m: None, "holds null"),
    "a_list": (lambda m: [m], "not a checkpoint"),
    "no_config": (lambda m: {k: v for k, v in m.items() if k != "config"}, "no 'config'"),
    "done_round_abc": (lambda m: m | {"done_round": "abc"}, 'done_round is "abc", not a JSON integer'),
    "done_round_99": (lambda m: m | {"done_round": 99}, "done_round=99 is outside the run's rounds (-1..3)"),
    "done_round_true": (lambda m: m | {"done_round": True}, "not a JSON integer"),
    "done_round_behind_history": (lambda m: m | {"done_round": 0}, "history holds rounds 1..2"),
    "history_edited": (lambda m: m | {"history": [h | {"train_loss": 0.0} for h in m["history"]]},
                       "does not match its own checksum"),
    "status_forged": (lambda m: m | {"status": "FINISHED"}, "does not match its own checksum"),
    "no_format": (lambda m: {k: v for k, v in m.items() if k != "format"}, "has format None"),
    "future_format": (lambda m: m | {"format": 99}, "has format 99"),
    "totals_text": (lambda m: m | {"totals": {"sim_time": "x", "bytes_up_total": 0, "bytes_down_total": 0}},
                    "totals must hold the numbers"),
    "state_escapes": (lambda m: m | {"state": "../../etc"}, "not a checkpoint folder name"),
}


@pytest.mark.parametrize("case", sorted(META_CASES))
def test_tampered_meta_json(victim, capsys, case):
    change, expected = META_CASES[case]
    victim.write_meta(change(victim.meta()))
    victim.resume_refused(capsys, "meta.json", expected)


@pytest.mark.parametrize("content", [b'{"run_id": "x", "config": {', b"\xff\xfe\x00garbage", b""])
def test_truncated_or_binary_meta_json(victim, capsys, content):
    (victim.folder / META).write_bytes(content)
    victim.resume_refused(capsys, "meta.json", "unreadable")


def test_meta_json_that_is_a_folder(victim, capsys):
    (victim.folder / META).unlink()
    (victim.folder / META).mkdir()
    victim.resume_refused(capsys, "meta.json", "unreadable")


def test_checkpoint_folder_of_another_run(victim, capsys):
    other = victim.folder.parent / "0123456789abcdef0123456789abcdef"
    shutil.copytree(victim.folder, other)
    victim.resume_refused(capsys, "meta.json", f"belongs to run {victim.run_id}, not to {other.name}",
                          run_id=other.name)


@pytest.mark.parametrize("run_id", ["../../etc", "a/b", ".hidden", ""])
def test_run_id_that_is_a_path(victim, capsys, run_id):
    victim.resume_refused(capsys, "is not a run id", run_id=run_id)


def test_unknown_run_id(victim, capsys):
    victim.resume_refused(capsys, "no checkpoint for run 'feedface'", run_id="feedface")


def test_config_in_the_checkpoint_no_longer_valid(victim, capsys):
    victim.recommit(config=victim.meta()["config"] | {"algorithm": {"name": "fedmagic"}})
    victim.resume_refused(capsys, "meta.json", "its config is not valid here", "fedmagic")


def test_run_missing_from_mlflow(victim, capsys, tmp_path):
    config = victim.meta()["config"]
    other = fresh_mlflow_db(tmp_path / "other")  # an MLflow store without this run
    victim.recommit(config=config | {"tracking": config["tracking"] | {"uri": other}})
    victim.resume_refused(capsys, f"run {victim.run_id} is not in the MLflow store", "tracking.uri")


# ----- the state files ---------------------------------------------------------------------------------------


def test_global_npy_of_the_wrong_shape(victim, capsys):
    np.save(victim.state / "global.npy", np.zeros(7, np.float32))
    victim.resume_refused(capsys, "global.npy", "does not match its sha256")


def test_global_npy_of_the_wrong_shape_with_a_recomputed_checksum(victim, capsys):
    np.save(victim.state / "global.npy", np.zeros(7, np.float32))
    victim.recommit(files=victim.meta()["files"] | {"global.npy": file_sha256(victim.state / "global.npy")})
    victim.resume_refused(capsys, "global.npy", "holds float32 (7,)", "the model needs float32")


def test_global_npy_with_other_values(victim, capsys):
    vec = np.load(victim.state / "global.npy")
    np.save(victim.state / "global.npy", np.zeros_like(vec))
    victim.resume_refused(capsys, "global.npy", "does not match its sha256")


def test_truncated_store_snapshot(victim, capsys):
    path = victim.state / "store.npz"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    victim.resume_refused(capsys, "store.npz", "truncated, damaged or replaced")


def test_store_snapshot_with_an_extra_client(victim, capsys):
    _npz_without(victim.state / "store.npz", **{"999/extra": np.zeros(3, np.float32)})
    victim.resume_refused(capsys, "store.npz", "does not match its sha256")


@pytest.mark.parametrize("name", ["store.npz", "global.npy"])
def test_missing_state_file(victim, capsys, name):
    (victim.state / name).unlink()
    victim.resume_refused(capsys, name, "is missing")


def test_file_added_to_the_state(victim, capsys):
    (victim.state / "server.npz").write_bytes(b"surprise")
    victim.resume_refused(capsys, "server.npz", "not part of the checkpoint")


def test_state_folder_deleted(victim, capsys):
    shutil.rmtree(victim.state)
    victim.resume_refused(capsys, victim.state.name, "is missing")


def test_tampered_server_state(tmp_path, capsys):
    # the built-in FedAvgM (server momentum in server.npz); a plugin here would stay registered for later tests
    cfg = load_config(spec_file(tmp_path, rounds=3, algorithm={"name": "fedavgm"}))
    run_id = run(cfg, progress=False, stop_after=1).run_id
    meta = read_meta(cfg.checkpoint_dir, run_id)
    server = Path(cfg.checkpoint_dir) / run_id / meta["state"] / "server.npz"
    np.savez(server, momentum=np.zeros(3))
    one_error(*cli(capsys, "resume", run_id, "--checkpoint-dir", cfg.checkpoint_dir), "server.npz",
              "does not match its sha256")
    assert mlflow_runs(tmp_path)[0].info.status == "RUNNING"


def test_data_changed_since_the_checkpoint(tmp_path, capsys):
    from tests.test_adversarial_input import arrays_spec, digits_arrays, write_npz

    x, y = digits_arrays()
    npz = write_npz(tmp_path / "d.npz", x=x, y=y)
    cfg = load_config(arrays_spec(tmp_path, npz, rounds=3))
    run_id = run(cfg, progress=False, stop_after=1).run_id
    y[:20] = y[20:40]  # someone "fixed" a few labels
    write_npz(npz, x=x, y=y)
    one_error(*cli(capsys, "resume", run_id, "--checkpoint-dir", cfg.checkpoint_dir), "meta.json",
              "taken on another partition")
    assert mlflow_runs(tmp_path)[0].info.status == "RUNNING"


# ----- finished runs -----------------------------------------------------------------------------------------


def _finished(tmp: Path, keep: bool = True) -> tuple[str, str, MlflowClient]:
    cfg = load_config(spec_file(tmp, rounds=2, keep_checkpoint=keep))
    result = run(cfg, progress=False)
    return result.run_id, cfg.checkpoint_dir, MlflowClient(cfg.tracking.uri)


def _mlflow_state(client: MlflowClient, run_id: str) -> tuple:
    mlrun = client.get_run(run_id)
    best = [(m.step, m.value) for m in client.get_metric_history(run_id, "best_personal_acc")]
    return mlrun.info.status, mlrun.data.tags, best


def test_resuming_a_finished_run_is_refused_and_changes_nothing(tmp_path, capsys):
    run_id, ckpt, client = _finished(tmp_path)
    before = (_mlflow_state(client, run_id), (Path(ckpt) / run_id / META).read_bytes())
    one_error(*cli(capsys, "resume", run_id, "--checkpoint-dir", ckpt), f"run {run_id} is FINISHED",
              "nothing to resume")
    assert (_mlflow_state(client, run_id), (Path(ckpt) / run_id / META).read_bytes()) == before
    assert len(before[0][2]) == 1  # best_* logged once


def test_resuming_a_finished_run_whose_checkpoint_was_removed(tmp_path, capsys):
    run_id, ckpt, client = _finished(tmp_path, keep=False)  # the default: a finished run keeps no checkpoint
    before = _mlflow_state(client, run_id)
    one_error(*cli(capsys, "resume", run_id, "--checkpoint-dir", ckpt), f"no checkpoint for run '{run_id}'",
              "FINISHED", "nothing to resume")
    assert _mlflow_state(client, run_id) == before


def test_a_failed_resume_of_a_finished_run_leaves_it_finished(tmp_path, capsys):
    run_id, ckpt, client = _finished(tmp_path)
    folder = Path(ckpt) / run_id
    meta = read_meta(ckpt, run_id)
    Checkpoint(folder)._commit({k: v for k, v in meta.items() if k != "checksum"} | {"status": "RUNNING"})
    (folder / meta["state"] / "global.npy").write_bytes(b"junk")
    before = _mlflow_state(client, run_id)
    one_error(*cli(capsys, "resume", run_id, "--checkpoint-dir", ckpt), "global.npy", "does not match its sha256")
    assert _mlflow_state(client, run_id) == before  # still FINISHED, nothing logged


def test_finished_in_mlflow_but_not_in_the_checkpoint(tmp_path, capsys):
    """A driver killed between MLflow's FINISHED and the checkpoint's: refused by MLflow's word."""
    run_id, ckpt, client = _finished(tmp_path)
    folder = Path(ckpt) / run_id
    meta = read_meta(ckpt, run_id)
    Checkpoint(folder)._commit({k: v for k, v in meta.items() if k != "checksum"} | {"status": "RUNNING"})
    before = _mlflow_state(client, run_id)
    one_error(*cli(capsys, "resume", run_id, "--checkpoint-dir", ckpt), f"run {run_id} is FINISHED in MLflow")
    assert _mlflow_state(client, run_id) == before


# ----- runs that must survive --------------------------------------------------------------------------------


def _whole(tmp: Path, **changes) -> list[dict]:
    return metrics_history(run(load_config(spec_file(tmp, **changes)), progress=False))


def _resumed_history(client: MlflowClient, run_id: str, keys=("clients_kept", "train_loss", "personal_acc")):
    return {k: sorted((m.step, m.value) for m in client.get_metric_history(run_id, k)) for k in keys}


def test_driver_killed_while_workers_start_is_resumable(tmp_path, capsys):
    spec = spec_file(tmp_path, rounds=3)
    script = ("import os, signal, sys\nfrom harness.config import load_config\nfrom harness.engine import run\n"
              "run(load_config(sys.argv[1]), progress=False,\n"
              "    executor_factory=lambda cfg, data: os.kill(os.getpid(), signal.SIGKILL))\n")
    proc = subprocess.run([sys.executable, "-c", script, str(spec)], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=180)
    assert proc.returncode == -9, proc.stderr
    (mlrun,) = mlflow_runs(tmp_path)
    assert mlrun.info.status == "RUNNING"  # the driver died: nobody could end it
    run_id = mlrun.info.run_id
    assert read_meta(tmp_path / "ckpt", run_id)["done_round"] == -1  # written before the workers started
    code, err = cli(capsys, "resume", run_id, "--checkpoint-dir", str(tmp_path / "ckpt"))
    assert code == 0 and "Traceback" not in err
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    assert client.get_run(run_id).info.status == "FINISHED"
    whole = _whole(tmp_path / "whole", rounds=3)
    assert [v for _, v in _resumed_history(client, run_id)["personal_acc"]] == [h["personal_acc"] for h in whole]


class CtrlCInRound2(InProcessExecutor):
    calls = 0

    def map(self, method, batches):
        CtrlCInRound2.calls += method == "train"
        if method == "train" and CtrlCInRound2.calls == 2:
            raise KeyboardInterrupt
        return super().map(method, batches)


def test_a_resumed_ctrl_c_run_loses_its_failure_tag(tmp_path, capsys):
    CtrlCInRound2.calls = 0
    cfg = load_config(spec_file(tmp_path, rounds=3))
    with pytest.raises(KeyboardInterrupt):
        run(cfg, progress=False, executor_factory=CtrlCInRound2)
    (mlrun,) = mlflow_runs(tmp_path)
    assert mlrun.info.status == "KILLED" and "interrupted" in mlrun.data.tags["fedharness.failure"]
    code, err = cli(capsys, "resume", mlrun.info.run_id, "--checkpoint-dir", cfg.checkpoint_dir)
    assert code == 0, err
    (mlrun,) = mlflow_runs(tmp_path)
    assert mlrun.info.status == "FINISHED" and "fedharness.failure" not in mlrun.data.tags


class CrashInRound6(InProcessExecutor):
    calls = 0

    def map(self, method, batches):
        CrashInRound6.calls += method == "train"
        if method == "train" and CrashInRound6.calls == 6:
            raise RuntimeError("simulated crash in round 6")
        return super().map(method, batches)


def test_replayed_rounds_are_not_logged_twice(tmp_path, capsys):
    """checkpoint_every=4: a crash in round 6 leaves the round-4 snapshot; the resume replays round 5 (and 6),
    and MLflow still holds one value per round and key, equal to an uninterrupted run's."""
    CrashInRound6.calls = 0
    cfg = load_config(spec_file(tmp_path, rounds=6, checkpoint_every=4, eval_every=2))
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(cfg, progress=False, executor_factory=CrashInRound6)
    (mlrun,) = mlflow_runs(tmp_path)
    run_id = mlrun.info.run_id
    assert read_meta(cfg.checkpoint_dir, run_id)["done_round"] == 3
    assert cli(capsys, "resume", run_id, "--checkpoint-dir", cfg.checkpoint_dir)[0] == 0
    client = MlflowClient(cfg.tracking.uri)
    keys = sorted(client.get_run(run_id).data.metrics)
    for key in keys:
        steps = [m.step for m in client.get_metric_history(run_id, key)]
        assert len(steps) == len(set(steps)), (key, steps)
    whole = _whole(tmp_path / "whole", rounds=6, checkpoint_every=4, eval_every=2)
    assert [v for _, v in _resumed_history(client, run_id)["train_loss"]] == [h["train_loss"] for h in whole]
    assert [s for s, _ in _resumed_history(client, run_id)["clients_kept"]] == list(range(1, 7))


def test_resume_from_a_moved_checkpoint_reads_and_writes_only_there(tmp_path, capsys):
    cfg = load_config(spec_file(tmp_path, rounds=3, store={"backend": "disk"}, keep_checkpoint=True))
    run_id = run(cfg, progress=False, stop_after=1).run_id
    new = tmp_path / "moved"
    new.mkdir()
    shutil.move(str(Path(cfg.checkpoint_dir) / run_id), str(new / run_id))
    assert cli(capsys, "resume", run_id, "--checkpoint-dir", str(new))[0] == 0
    assert not (Path(cfg.checkpoint_dir) / run_id).exists()  # the old place was neither read nor recreated
    assert read_meta(new, run_id)["status"] == "FINISHED"
    client = MlflowClient(cfg.tracking.uri)
    whole = _whole(tmp_path / "whole", rounds=3, store={"backend": "disk"})
    assert [v for _, v in _resumed_history(client, run_id)["personal_acc"]] == [h["personal_acc"] for h in whole]


# ----- the partition cache -----------------------------------------------------------------------------------


def _tamper_cache(cache: Path, how: str) -> None:
    (entry,) = cache.glob("*.npz")
    with np.load(entry) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["index_train"] = np.zeros_like(arrays["index_train"]) if how == "zeroed" else \
        np.where(np.arange(len(arrays["index_train"])) == 0, 10**6, arrays["index_train"])
    np.savez(entry, **arrays)


@pytest.mark.parametrize("how", ["zeroed", "out_of_range"])
def test_damaged_partition_cache_is_recomputed_not_trained_on(tmp_path, caplog, how):
    whole = _whole(tmp_path / "clean", rounds=2)
    cfg = load_config(spec_file(tmp_path / "clean", rounds=2))  # same cache folder as the clean run
    _tamper_cache(Path(cfg.partition.cache_dir), how)
    again = metrics_history(run(cfg.model_copy(update={"checkpoint_dir": str(tmp_path / "ckpt2")}), progress=False))
    assert again == whole
    assert "partition cache entry" in caplog.text and "recomputing" in caplog.text


def test_resume_with_a_damaged_partition_cache_gives_the_uninterrupted_numbers(tmp_path, capsys):
    cfg = load_config(spec_file(tmp_path, rounds=3))
    run_id = run(cfg, progress=False, stop_after=1).run_id
    _tamper_cache(Path(cfg.partition.cache_dir), "zeroed")
    assert cli(capsys, "resume", run_id, "--checkpoint-dir", cfg.checkpoint_dir)[0] == 0
    whole = _whole(tmp_path / "whole", rounds=3)
    client = MlflowClient(cfg.tracking.uri)
    assert [v for _, v in _resumed_history(client, run_id)["personal_acc"]] == [h["personal_acc"] for h in whole]
