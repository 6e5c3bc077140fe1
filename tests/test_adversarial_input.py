"""An adversarial user's bad input, through the command line (in-process: `harness.cli.main`).

Every case asserts: exit code 2, exactly one line on stderr that names the field or the file, no
traceback, and that MLflow and the checkpoint folder are consistent (bad input found before the run
starts leaves neither an MLflow run nor a checkpoint; a run that fails while running is FAILED in
MLflow with the reason and keeps a checkpoint that resume accepts). docs/reliability.md has the table.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from harness.cli import main
from harness.engine import read_meta
from tests.conftest import ROOT

# ----- helpers (tests/test_adversarial_checkpoints.py uses them too) --------------------------------------


_EMPTY_DB: list[Path] = []


def fresh_mlflow_db(tmp: Path) -> str:
    """tmp/mlflow.db, copied from an empty store created once (creating one costs seconds of migrations)."""
    tmp.mkdir(parents=True, exist_ok=True)
    if not _EMPTY_DB:
        folder = Path(tempfile.mkdtemp(prefix="fedharness-empty-mlflow-"))
        MlflowClient(f"sqlite:///{folder}/mlflow.db").search_experiments()
        _EMPTY_DB.append(folder / "mlflow.db")
    if not (tmp / "mlflow.db").exists():
        shutil.copyfile(_EMPTY_DB[0], tmp / "mlflow.db")
    return f"sqlite:///{tmp}/mlflow.db"


def spec_file(tmp: Path, **changes) -> Path:
    """A small, fast run spec (digits, 10 clients, in-process workers, MLflow + checkpoints under tmp)."""
    spec = {
        "name": "adv", "seed": 0, "rounds": 2, "join_ratio": 0.5,
        "data": {"source": "digits"},
        "partition": {"scheme": "dirichlet", "num_clients": 10, "alpha": 0.5, "min_samples": 10,
                      "cache_dir": str(tmp / "cache")},
        "model": {"name": "mlp", "options": {"hidden": 16}},
        "train": {"local_epochs": 1, "batch_size": 16, "lr": 0.05},
        "workers": {"num_workers": 1, "use_ray": False},
        "tracking": {"uri": fresh_mlflow_db(tmp), "experiment": "adv"},
        "checkpoint_dir": str(tmp / "ckpt"),
    }
    for key, value in changes.items():
        spec[key] = value if not isinstance(value, dict) else {**spec.get(key, {}), **value}
    path = tmp / "spec.yaml"
    path.write_text(json.dumps(spec))  # JSON is YAML
    return path


def cli(capsys, *argv: str) -> tuple[int, str]:
    capsys.readouterr()  # what the test itself printed before
    code = main([*argv, "--quiet"] if argv[0] in ("run", "resume") else list(argv))
    captured = capsys.readouterr()
    return code, captured.err


def one_error(code: int, err: str, *names: str, exit_code: int = 2) -> str:
    """The single stderr line of a clean error; it must name each of `names`."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert code == exit_code, (code, err)
    assert lines[0].startswith("fedharness: "), lines[0]
    for name in names:
        assert name in lines[0], (name, lines[0])
    return lines[0]


def mlflow_runs(tmp: Path, experiment: str = "adv") -> list:
    db = tmp / "mlflow.db"
    if not db.exists():
        return []
    client = MlflowClient(f"sqlite:///{db}")
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id]) if exp else []


def nothing_started(tmp: Path) -> None:
    """Bad input found before the run: no MLflow run and no checkpoint were created."""
    assert mlflow_runs(tmp) == []
    assert not (tmp / "ckpt").exists() or not any((tmp / "ckpt").iterdir())
    assert not list((tmp / "ckpt").glob("*/meta.json"))


def failed_consistently(tmp: Path, *reason: str) -> None:
    """A run that failed while running: FAILED in MLflow with the reason, and a checkpoint resume accepts."""
    (run,) = mlflow_runs(tmp)
    assert run.info.status == "FAILED"
    for text in reason:
        assert text in run.data.tags["fedharness.failure"]
    meta = read_meta(tmp / "ckpt", run.info.run_id)  # verified: format, fields, checksum
    assert meta["status"] == "RUNNING"


def write_npz(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return (bunch.images.astype(np.float32) / 16.0)[:, None], bunch.target.astype(np.int64)


def arrays_spec(tmp: Path, npz: Path, **changes) -> Path:
    return spec_file(tmp, data={"source": "arrays", "root": str(npz), "cache_dir": None}, **changes)


# ----- data files ---------------------------------------------------------------------------------------------


def test_truncated_npz_is_named_as_corrupt(tmp_path, capsys):
    x, y = digits_arrays()
    npz = write_npz(tmp_path / "d.npz", x=x, y=y)
    npz.write_bytes(npz.read_bytes()[: npz.stat().st_size // 2])
    line = one_error(*cli(capsys, "run", str(arrays_spec(tmp_path, npz))), "d.npz", "corrupt")
    assert "allow_pickle" not in line and "trust" not in line
    nothing_started(tmp_path)


def test_npz_that_is_not_a_zip_gets_no_pickle_hint(tmp_path, capsys):
    npz = tmp_path / "d.npz"
    npz.write_bytes(b"this is not a zip archive at all" * 10)
    line = one_error(*cli(capsys, "run", str(arrays_spec(tmp_path, npz))), "d.npz", "not a .npz data file")
    assert "allow_pickle" not in line and "trust" not in line
    nothing_started(tmp_path)


def test_npz_holding_python_objects_is_refused_without_unpickling(tmp_path, capsys):
    x, y = digits_arrays()
    npz = write_npz(tmp_path / "d.npz", x=x, y=np.array([object()] * len(y), dtype=object))
    one_error(*cli(capsys, "run", str(arrays_spec(tmp_path, npz))), "'y'", "d.npz", "Python objects")
    nothing_started(tmp_path)


def test_npz_member_damaged_inside_the_archive(tmp_path, capsys):
    x, y = digits_arrays()
    npz = write_npz(tmp_path / "d.npz", x=x, y=y)
    raw = bytearray(npz.read_bytes())
    raw[20_000:20_064] = b"\xff" * 64  # inside x.npy's data: the archive opens, the member fails its CRC
    npz.write_bytes(bytes(raw))
    one_error(*cli(capsys, "run", str(arrays_spec(tmp_path, npz))), "'x'", "d.npz", "corrupt")
    nothing_started(tmp_path)


def test_nan_pixels_of_one_client_are_an_error_at_load_with_the_count(tmp_path, capsys):
    x, y = digits_arrays()
    x[[5, 17, 40]] = np.nan  # three samples, whoever holds them
    npz = write_npz(tmp_path / "d.npz", x=x, y=y)
    one_error(*cli(capsys, "run", str(arrays_spec(tmp_path, npz))), "3 of 1,797 samples", "NaN/inf", "d.npz")
    nothing_started(tmp_path)


def test_inf_pixels_are_an_error_too(tmp_path, capsys):
    x, y = digits_arrays()
    x[0, 0, 0, 0] = np.inf
    npz = write_npz(tmp_path / "d.npz", x=x, y=y)
    one_error(*cli(capsys, "run", str(arrays_spec(tmp_path, npz))), "1 of 1,797 samples", "d.npz")
    nothing_started(tmp_path)


def test_one_stray_label_is_an_error_not_a_1001_class_model(tmp_path, capsys):
    x, y = digits_arrays()
    y[3] = 1000
    npz = write_npz(tmp_path / "d.npz", x=x, y=y)
    one_error(*cli(capsys, "run", str(arrays_spec(tmp_path, npz))), "d.npz", "labels must be the class ids 0..C-1",
              "1000", "1 sample(s)")
    nothing_started(tmp_path)


def test_table_data_with_avgcnn_says_what_shape_it_needs(tmp_path, capsys):
    x, y = digits_arrays()
    npz = write_npz(tmp_path / "d.npz", x=x.reshape(len(x), -1), y=y)
    one_error(*cli(capsys, "run", str(arrays_spec(tmp_path, npz)), "model.name=avgcnn", "model.options={}"),
              "avgcnn needs C x H x W images", "(64,)")
    nothing_started(tmp_path)


# ----- spec files ---------------------------------------------------------------------------------------------
BAD_SPECS = {
    "malformed": ("rounds: 5\ntrain: [lr: 0.1\n", "not valid YAML"),
    "empty": ("", "is empty"),
    "list": ("- rounds: 5\n- seed: 1\n", "mapping at top level"),
    "duplicate": ("rounds: 5\nseed: 1\nrounds: 50\n", "duplicate key 'rounds'"),
    "self_reference": ("x: &x\n  y: *x\n", "recursive"),
    "alias_bomb": ("a: &a [x,x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a]\n"
                   "c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c]\n"
                   "e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]\nf: [*e,*e,*e,*e,*e,*e,*e,*e,*e,*e]\n", "aliases"),
    "unicode_garbage": ("name: caf\u00e9 \u2603\nrounds: \u221e\u202e\n", "rounds"),
}


@pytest.mark.parametrize("case", sorted(BAD_SPECS))
def test_bad_run_spec_files(tmp_path, capsys, case):
    text, expected = BAD_SPECS[case]
    path = tmp_path / f"{case}.yaml"
    path.write_text(text, encoding="utf-8")
    names = (expected,) if case == "unicode_garbage" else (f"{case}.yaml", expected)
    one_error(*cli(capsys, "run", str(path)), *names)


def test_binary_file_as_spec(tmp_path, capsys):
    path = tmp_path / "model.bin"
    path.write_bytes(b"\x00\x9c\xff\xfe" + os.urandom(64))
    one_error(*cli(capsys, "run", str(path)), "model.bin", "not UTF-8 text")


def test_folder_as_spec(tmp_path, capsys):
    one_error(*cli(capsys, "run", str(tmp_path)), str(tmp_path), "is a folder")


def test_python_tag_is_an_error_and_never_runs(tmp_path, capsys):
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.yaml"
    path.write_text(f'rounds: !!python/object/apply:os.system ["touch {marker}"]\n')
    one_error(*cli(capsys, "run", str(path)), "evil.yaml", "!!python/object/apply:os.system", "not allowed")
    study = tmp_path / "evil_study.yaml"
    study.write_text(f'name: x\nbase: !!python/object/apply:os.system ["touch {marker}"]\n')
    one_error(*cli(capsys, "study", str(study)), "evil_study.yaml", "not allowed")
    assert not marker.exists()


def test_malformed_study_spec_and_base(tmp_path, capsys):
    study = tmp_path / "study.yaml"
    study.write_text("name: s\ngrid: {seed: [0, 1\n")
    one_error(*cli(capsys, "study", str(study)), "study.yaml", "not valid YAML")
    (tmp_path / "base.yaml").write_text("rounds: [\n")
    study.write_text("name: s\nbase: base.yaml\ngrid: {seed: [0, 1]}\n")
    one_error(*cli(capsys, "study", str(study)), "base.yaml", "not valid YAML")


@pytest.mark.parametrize("override, names", [
    ("rounds=0", ("rounds", "greater than or equal to 1")),
    ("seed=-1", ("seed", "greater than or equal to 0")),
    ("train.lr=inf", ("train.lr", "finite")),
    ("train.lr=.nan", ("train.lr",)),
    ("budget.devices.seconds_per_sample=.inf", ("budget.devices.seconds_per_sample", "finite")),
    ("train.lr=[0.1,", ("train.lr=[0.1,", "not valid YAML")),
    ("clients_per_round=1000", ("clients_per_round=1000", "10 clients")),
])
def test_bad_overrides(tmp_path, capsys, override, names):
    one_error(*cli(capsys, "run", str(spec_file(tmp_path)), override), *names)
    nothing_started(tmp_path)


def test_clients_per_round_above_the_training_clients_names_both_numbers(tmp_path, capsys):
    spec = spec_file(tmp_path, partition={"unseen_fraction": 0.2})
    one_error(*cli(capsys, "run", str(spec), "clients_per_round=10"), "clients_per_round=10", "8 clients that train")
    nothing_started(tmp_path)


def test_validate_reports_the_same_errors(tmp_path, capsys):
    one_error(*cli(capsys, "validate", str(spec_file(tmp_path)), "train.lr=inf"), "train.lr")


# ----- device, tracking, workers ------------------------------------------------------------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu(tmp_path, capsys):
    one_error(*cli(capsys, "run", str(spec_file(tmp_path)), "device=cuda"), "device=cuda")
    nothing_started(tmp_path)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_gpu_workers_without_a_gpu_fail_at_once_instead_of_waiting_forever(tmp_path, capsys):
    spec = spec_file(tmp_path, workers={"use_ray": True, "num_gpus": 0.5})
    one_error(*cli(capsys, "run", str(spec)), "workers.num_gpus=0.5")
    nothing_started(tmp_path)


def test_bogus_tracking_uri(tmp_path, capsys):
    one_error(*cli(capsys, "run", str(spec_file(tmp_path)), "tracking.uri=bogus://x"), "tracking.uri='bogus://x'")
    assert not (tmp_path / "ckpt").exists()  # nothing was created


def test_worker_death_with_no_retries_left(tmp_path, capsys, monkeypatch):
    """max_retries=0 and a worker dies: the executor's own retry logic (RayExecutor.collect) gives up; the
    dying actor is simulated, so no Ray cluster is started."""
    import ray.exceptions

    import harness.engine.executor as executor_mod

    run_mod = sys.modules["harness.engine.run"]

    class DyingRay(executor_mod.RayExecutor):
        def __init__(self, cfg, data):
            self.max_retries, self.num_workers, self.retries = cfg.workers.max_retries, 1, 0
            self.actors, self.cache = [object()], None

        def submit(self, method, batches):
            return {i: (self.actors[0], "ref") for i in range(len(batches))}

        def shutdown(self):
            self.actors = []

    def dead(ref):
        raise ray.exceptions.ActorDiedError()

    monkeypatch.setattr(executor_mod.ray, "get", dead)
    monkeypatch.setattr(run_mod, "make_executor", DyingRay)
    one_error(*cli(capsys, "run", str(spec_file(tmp_path)), "workers.max_retries=0"), "workers.max_retries=0",
              "run failed")
    failed_consistently(tmp_path, "workers.max_retries=0")


# ----- runs that diverge: FAILED, never a silent FINISHED ------------------------------------------------------


def test_nan_policy_fail_is_one_line_and_a_failed_run(tmp_path, capsys):
    one_error(*cli(capsys, "run", str(spec_file(tmp_path)), "train.lr=1e12", "nan_policy=fail"), "nan_policy=fail",
              "NaN/inf")
    failed_consistently(tmp_path, "nan_policy=fail")


def test_huge_lr_where_every_update_diverges_fails_instead_of_finishing_untrained(tmp_path, capsys):
    line = one_error(*cli(capsys, "run", str(spec_file(tmp_path)), "train.lr=1e30"), "no client update survived",
                     "train.lr")
    assert "round 1" in line
    failed_consistently(tmp_path, "no client update survived")
    (run,) = mlflow_runs(tmp_path)
    assert run.data.metrics["clients_nonfinite"] == run.data.metrics["clients_trained"] > 0  # the round is logged


def test_skip_policy_still_fails_a_run_in_which_nothing_ever_survived(tmp_path, capsys):
    one_error(*cli(capsys, "run", str(spec_file(tmp_path)), "train.lr=1e30", "empty_round_policy=skip"),
              "no client update survived in any of the 2 rounds")
    failed_consistently(tmp_path, "never trained")


def _availability_spec(tmp: Path) -> Path:
    # 10 clients, each online with p=0.1: with seed 13, round 1 has nobody online, rounds 2 and 3 one client
    return spec_file(tmp, rounds=3, seed=13, join_ratio=1.0, budget={"devices": {"availability": 0.1}})


def test_round_with_nobody_online_fails_by_default(tmp_path, capsys):
    one_error(*cli(capsys, "run", str(_availability_spec(tmp_path))), "round 1", "availability",
              "empty_round_policy=fail")
    failed_consistently(tmp_path, "no client was online")


def test_skip_policy_counts_and_reports_empty_rounds(tmp_path, capsys):
    code, err = cli(capsys, "run", str(_availability_spec(tmp_path)), "empty_round_policy=skip")
    assert code == 0 and "Traceback" not in err
    assert "fedharness: warning: run" in err and "1 of 3 rounds had no surviving client update (rounds 1;" in err
    (run,) = mlflow_runs(tmp_path)
    assert run.info.status == "FINISHED"
    assert MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_metric_history(run.info.run_id, "clients_kept")[0] \
        .value == 0


# ----- device traces ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("row, names", [
    ("-0.5,1,2", ("line 3", "seconds_per_sample=-0.5", "positive")),
    ("0.5,0,2", ("line 3", "upload_mbps=0.0",)),
    ("0.5,1,nan", ("line 3", "download_mbps=nan")),
    ("0.5,1,fast", ("line 3", "download_mbps='fast'", "not a number")),
    ("0.5,1", ("line 3", "download_mbps=None")),
])
def test_bad_device_trace_rows(tmp_path, capsys, row, names):
    trace = tmp_path / "trace.csv"
    trace.write_text(f"seconds_per_sample,upload_mbps,download_mbps\n0.01,1,2\n{row}\n")
    spec = spec_file(tmp_path, budget={"devices": {"distribution": "trace", "trace_file": str(trace)}})
    one_error(*cli(capsys, "run", str(spec)), "trace.csv", *names)
    nothing_started(tmp_path)


def test_trace_availability_out_of_range(tmp_path, capsys):
    trace = tmp_path / "trace.csv"
    trace.write_text("seconds_per_sample,upload_mbps,download_mbps,availability\n0.01,1,2,1.5\n")
    spec = spec_file(tmp_path, budget={"devices": {"distribution": "trace", "trace_file": str(trace)}})
    one_error(*cli(capsys, "run", str(spec)), "trace.csv", "availability=1.5", "[0, 1]")


# ----- nothing escapes main(): a real process ----------------------------------------------------------------


def test_no_traceback_escapes_the_real_command(tmp_path):
    marker = tmp_path / "PWNED"
    bad = tmp_path / "evil.yaml"
    bad.write_text(f'name: !!python/object/apply:os.system ["touch {marker}"]\n')
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "harness.cli", "run", str(bad)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    one_error(proc.returncode, proc.stderr, "evil.yaml", "not allowed")
    assert not marker.exists()


# ----- where things go ---------------------------------------------------------------------------------------


def test_checkpoint_dir_that_is_a_file(tmp_path, capsys):
    (tmp_path / "ckpt").write_text("not a folder")
    one_error(*cli(capsys, "run", str(spec_file(tmp_path))), "checkpoint_dir=", "cannot hold checkpoints",
              "is not a folder")
    assert mlflow_runs(tmp_path) == []


def test_partition_cache_dir_that_is_a_file_is_survived_uncached(tmp_path, capsys, caplog):
    (tmp_path / "cache").write_text("not a folder")
    code, err = cli(capsys, "run", str(spec_file(tmp_path)))
    assert code == 0 and "Traceback" not in err
    assert "cannot hold the partition cache" in caplog.text
    assert mlflow_runs(tmp_path)[0].info.status == "FINISHED"


def test_plugin_that_raises_on_import(tmp_path, capsys):
    plugin = tmp_path / "boom.py"
    plugin.write_text("raise RuntimeError('boom')\n")
    one_error(*cli(capsys, "run", str(spec_file(tmp_path)), f"plugins=[{plugin}]"), "boom.py", "failed to load")
    nothing_started(tmp_path)
