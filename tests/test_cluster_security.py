"""Ray and hygiene: a local Ray listens on loopback only and leaves no process behind (normal end,
SIGKILLed driver, `fedharness ui` under SIGTERM); a cluster that refuses us or lacks the resources is
one line; names never become paths outside their folder; finished runs leave no checkpoint."""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from harness.engine.reaper import session_pids
from tests.conftest import ROOT, small_config

RUN = {"name": "sec", "seed": 0, "rounds": 60, "join_ratio": 0.5, "eval_every": 10, "data": {"source": "digits"},
       "partition": {"scheme": "dirichlet", "num_clients": 10, "alpha": 0.5, "min_samples": 10},
       "model": {"name": "mlp", "options": {"hidden": 16}}, "train": {"local_epochs": 2, "batch_size": 16},
       # warm_start off: these tests watch the actors, which must be up while the run still has rounds to train
       "workers": {"num_workers": 1, "num_cpus": 1, "use_ray": True, "warm_start": False}}


# ----- helpers: processes and listening sockets, from /proc --------------------------------------------------
def _listening() -> dict[int, tuple[str, int]]:
    """inode -> (address, port) of every listening TCP socket."""
    table = {}
    for name, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        try:
            lines = Path(f"/proc/net/{name}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if parts[3] != "0A":  # LISTEN
                continue
            host, port = parts[1].split(":")
            raw = bytes.fromhex(host)
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))  # little-endian words
            table[int(parts[9])] = (socket.inet_ntop(family, raw), int(port, 16))
    return table


def _sockets_of(pid: int, table: dict[int, tuple[str, int]]) -> list[tuple[str, int]]:
    found = []
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return found
    for fd in fds:
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:[") and int(link[8:-1]) in table:
            found.append(table[int(link[8:-1])])
    return found


def _is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).is_loopback


def _name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
    except OSError:
        return "?"


def _wait_gone(marker: str, timeout: float) -> tuple[float, list[str]]:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        left = session_pids(marker)
        if not left:
            return time.monotonic() - t0, []
        time.sleep(0.2)
    return time.monotonic() - t0, [_name(p) for p in session_pids(marker)]


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), **extra}


@pytest.fixture
def ray_tmp():
    """A short, private Ray temp dir (RAY_TMPDIR): every process of the run's Ray session has it in its
    command line or among its open files, and nothing else on the machine does."""
    path = tempfile.mkdtemp(prefix="fhr", dir="/tmp")
    yield path
    from harness.engine.reaper import sweep

    sweep(path)  # if a test failed half-way
    shutil.rmtree(path, ignore_errors=True)


def _ray_run(tmp_path: Path, ray_tmp: str) -> subprocess.Popen:
    spec = tmp_path / "spec.yaml"
    spec.write_text(json.dumps(RUN))
    return subprocess.Popen([sys.executable, "-m", "harness.cli", "run", str(spec), "--quiet",
                             f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", f"checkpoint_dir={tmp_path}/ckpt",
                             f"partition.cache_dir={tmp_path}/cache"], cwd=ROOT, env=_env(RAY_TMPDIR=ray_tmp),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for_actor(proc: subprocess.Popen, marker: str, timeout: float = 240) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read()
        pids = session_pids(marker)
        if any(_name(p).startswith("ray::ActorWorker") for p in pids):
            return pids
        time.sleep(0.2)
    raise AssertionError("no worker actor came up")


# ----- local Ray: loopback only, nothing left behind ---------------------------------------------------------
def test_local_ray_listens_on_loopback_only_and_leaves_no_process_after_the_run(tmp_path, ray_tmp):
    proc = _ray_run(tmp_path, ray_tmp)
    try:
        pids = _wait_for_actor(proc, ray_tmp)
        actors = [p for p in pids if _name(p).startswith("ray::ActorWorker")]
        # start_local keeps the actors at the driver's priority (Ray's own default would renice them by +15)
        assert {os.getpriority(os.PRIO_PROCESS, p) for p in actors} == {os.getpriority(os.PRIO_PROCESS, proc.pid)}
        seen: dict[str, list[tuple[str, int]]] = {}
        for _ in range(5):  # a few looks: servers start at different moments
            table = _listening()
            for pid in session_pids(ray_tmp) + [proc.pid]:
                seen.setdefault(f"{pid} {_name(pid)[:40]}", []).extend(_sockets_of(pid, table))
            time.sleep(0.3)
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out[-3000:]
    listening = {k: sorted(set(v)) for k, v in seen.items() if v}
    assert len(pids) >= 5 and len(listening) >= 4, listening  # gcs, raylet, driver, actor, agents
    exposed = {k: [a for a in v if not _is_loopback(a[0])] for k, v in listening.items()}
    assert not any(exposed.values()), exposed
    waited, left = _wait_gone(ray_tmp, timeout=5)
    assert not left, f"left behind {waited:.1f} s after the run: {left}"
    print(f"{len(pids)} Ray processes, {sum(len(v) for v in listening.values())} listening sockets, all on loopback; "
          f"none left {waited:.1f} s after the run")


def test_a_sigkilled_driver_leaves_no_ray_process_behind(tmp_path, ray_tmp):
    proc = _ray_run(tmp_path, ray_tmp)
    try:
        _wait_for_actor(proc, ray_tmp)
        time.sleep(1.0)
        proc.kill()
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    waited, left = _wait_gone(ray_tmp, timeout=20)  # without the reaper, Ray's agents lived ~60 s
    assert not left, f"left behind {waited:.1f} s after SIGKILL: {left}"
    print(f"every Ray process gone {waited:.1f} s after the driver's SIGKILL")


def test_a_second_ray_on_the_machine_does_not_hold_up_start_local(ray_tmp):
    """Ray's dashboard agent binds a fixed port (52365) by default; when another Ray (here: a socket) holds it, the
    agent retried it for 3.3 s while ray.init waited. start_local asks for a free port: no retry in the agent's
    log, and the agent listens on loopback elsewhere."""
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        holder.bind(("127.0.0.1", 52365))
        holder.listen()
    except OSError:
        pass  # held already (another Ray on this machine): the condition this test needs
    try:
        child = ("from harness.engine.cluster import start_local, session_dir, shutdown_ray\n"
                 "start_local(1)\nprint(session_dir())\nshutdown_ray()")
        proc = subprocess.run([sys.executable, "-c", child], cwd=ROOT, env=_env(RAY_TMPDIR=ray_tmp),
                              capture_output=True, text=True, timeout=300)
    finally:
        holder.close()
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = Path(proc.stdout.strip().splitlines()[-1]) / "logs" / "dashboard_agent.log"
    text = log.read_text()
    assert "Dashboard agent" in text, text[-2000:]  # the agent did start and log
    assert "Failed to bind" not in text, text[-2000:]


# ----- a cluster that refuses us or cannot place the workers -------------------------------------------------
def test_workers_that_do_not_fit_in_the_cluster_are_one_line_errors(tmp_path, ray_session):
    from harness.config import ConfigError
    from harness.engine.cluster import check_resources

    check_resources(small_config(tmp_path, "workers.use_ray=true", "workers.num_workers=2"))  # 2 x 1 CPU fit
    for overrides, needle in ((["workers.num_gpus=1"], "workers.num_gpus=1"),
                              (["workers.num_cpus=2"], "workers.num_cpus=2"),
                              (["workers.num_workers=3"], "workers.num_workers=3")):
        cfg = small_config(tmp_path, "workers.use_ray=true", *overrides)
        with pytest.raises(ConfigError) as err:
            check_resources(cfg)
        text = str(err.value)
        assert needle in text and "would wait forever" in text and "\n" not in text
        assert "2 CPUs and 0 GPUs on 1 node(s)" in text


def test_a_cluster_address_nobody_listens_on_is_one_line(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    spec = tmp_path / "spec.yaml"
    spec.write_text(json.dumps({**RUN, "rounds": 1}))
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "harness.cli", "run", str(spec), "--quiet",
                           f"workers.address=127.0.0.1:{port}", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
                           f"checkpoint_dir={tmp_path}/ckpt", f"partition.cache_dir={tmp_path}/cache"],
                          cwd=ROOT, env={k: v for k, v in _env().items() if not k.startswith("RAY_AUTH")},
                          capture_output=True, text=True, timeout=300)  # (a ray.init in this process set RAY_AUTH_MODE)
    wall = time.monotonic() - t0
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("fedharness:")]
    assert len(errors) == 1, proc.stderr
    assert f"workers.address='127.0.0.1:{port}': cannot join the Ray cluster" in errors[0]
    assert "RAY_AUTH_MODE=token" in errors[0] and "README" in errors[0]
    print(f"refused address reported after {wall:.1f} s")


# ----- fedharness ui -----------------------------------------------------------------------------------------
def _stat(pid: int) -> tuple[str, int, int] | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[-1].split()
    except OSError:
        return None
    return fields[0].decode(), int(fields[1]), int(fields[2])  # state, ppid, process group


@pytest.mark.parametrize("sig", [signal.SIGTERM, pytest.param(signal.SIGKILL, marks=pytest.mark.slow)])
def test_ui_stopped_by_a_signal_leaves_no_mlflow_server(tmp_path, sig):
    from harness.cli.ui import free_port

    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "ui", "--tracking-uri",
                             f"sqlite:///{tmp_path}/mlflow.db", "--port", str(free_port())], cwd=ROOT, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 180
        for line in proc.stdout:
            if "MLflow UI for" in line or time.monotonic() > deadline:
                break
        assert proc.poll() is None, "fedharness ui exited early"
        children = [int(p) for p in os.listdir("/proc") if p.isdigit() and (_stat(int(p)) or ("", 0, 0))[1] == proc.pid]
        assert children, "no MLflow server process"
        group = children[0]  # the server leads its own process group: uvicorn and its workers
        members = [int(p) for p in os.listdir("/proc") if p.isdigit() and (_stat(int(p)) or ("", 0, 0))[2] == group]
        assert members
        proc.send_signal(sig)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    deadline = time.monotonic() + 15
    alive = members
    while alive and time.monotonic() < deadline:
        alive = [p for p in members if (_stat(p) or ("Z",))[0] != "Z"]
        time.sleep(0.2)
    assert not alive, f"MLflow server processes alive after {sig.name} to fedharness ui: {alive}"


# ----- names never become paths outside their folder ---------------------------------------------------------
def test_safe_name_keeps_plain_names_and_confines_the_rest():
    from harness.tracking import safe_name

    assert safe_name("demo") == "demo" and safe_name("paper_cifar10-dir0.1") == "paper_cifar10-dir0.1"
    for bad in ("../../x", "..", ".", "/etc/passwd", "a/b", "a\\b", "", "x" * 300, "é", ".hidden", "-rf"):
        name = safe_name(bad)
        assert name and "/" not in name and "\\" not in name and not name.startswith(".") and len(name) <= 100
        assert Path("exports", name).resolve().parent == Path("exports").resolve()
    assert safe_name("a/b") != safe_name("a_b")  # cleaned names do not collide with real ones


def test_leaderboard_of_an_experiment_named_like_a_path_writes_inside_exports(tmp_path, monkeypatch, capsys):
    from harness.cli import main
    from harness.engine import run

    uri = f"sqlite:///{tmp_path}/store/mlflow.db"
    cfg = small_config(tmp_path, "rounds=1", "tracking.enabled=true", f"tracking.uri={uri}",
                       "tracking.experiment=../../escaped")
    run(cfg, progress=False)
    location = MlflowClient(uri).get_experiment_by_name("../../escaped").artifact_location
    assert location.startswith((tmp_path / "store" / "artifacts").as_uri() + "/")
    assert ".." not in location
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    assert main(["leaderboard", "--experiment", "../../escaped", "--tracking-uri", uri, "--no-plots",
                 "--no-log"]) == 0
    assert not (tmp_path / "escaped").exists()  # where exports/../../escaped would have been
    (folder,) = (work / "exports").iterdir()
    assert folder.name.startswith("escaped-") and (folder / "leaderboard.md").is_file()
    # an explicit --out is the user's own choice of path, and is kept as given
    assert main(["leaderboard", "--experiment", "../../escaped", "--tracking-uri", uri, "--no-plots", "--no-log",
                 "--out", str(tmp_path / "mine")]) == 0
    assert (tmp_path / "mine" / "leaderboard.md").is_file()


# ----- checkpoints: removed when a run finishes, unless kept -------------------------------------------------
def test_a_finished_run_removes_its_checkpoint_unless_kept(tmp_path):
    from harness.engine import resume, run

    done = run(small_config(tmp_path / "a", "rounds=2"), progress=False)
    assert not (tmp_path / "a" / "ckpt" / done.run_id).exists()
    kept = run(small_config(tmp_path / "b", "rounds=2", "keep_checkpoint=true"), progress=False)
    assert (tmp_path / "b" / "ckpt" / kept.run_id / "meta.json").is_file()
    paused = run(small_config(tmp_path / "c", "rounds=3"), progress=False, stop_after=1)
    assert (tmp_path / "c" / "ckpt" / paused.run_id / "meta.json").is_file()  # resumable: kept
    resume(paused.run_id, str(tmp_path / "c" / "ckpt"), progress=False)
    assert not (tmp_path / "c" / "ckpt" / paused.run_id).exists()  # finished after the resume: removed


def test_a_study_leaves_checkpoints_only_of_paused_or_kept_cells(tmp_path):
    from harness.studies import load_study, run_study

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    spec = {"name": "ck", "base": {"rounds": 3, "join_ratio": 0.5, "data": {"source": "digits"},
                                   "partition": {"scheme": "dirichlet", "num_clients": 10, "alpha": 0.5},
                                   "model": {"name": "mlp", "options": {"hidden": 16}},
                                   "workers": {"num_workers": 1, "use_ray": False}},
            "grid": {"seed": [0, 1]}}
    extra = [f"checkpoint_dir={tmp_path}/ckpt", f"partition.cache_dir={tmp_path}/cache"]
    paused = run_study(load_study(spec, extra, tracking_uri=uri), progress=False, until_round=1)
    assert sorted(paused.ran) == [0, 1]
    assert len(list((tmp_path / "ckpt").glob("*/meta.json"))) == 2  # paused cells keep theirs
    rest = run_study(load_study(spec, extra, tracking_uri=uri), progress=False)
    assert sorted(rest.resumed) == [0, 1]
    assert not list((tmp_path / "ckpt").glob("*/meta.json"))  # finished: gone; MLflow holds the results
    again = run_study(load_study(spec, extra, tracking_uri=uri), progress=False)
    assert sorted(again.skipped) == [0, 1] and not again.ran  # still recognised as finished, by MLflow
    kept = run_study(load_study({**spec, "name": "ck2", "grid": {"seed": [2]}}, [*extra, "keep_checkpoint=true"],
                                tracking_uri=uri), progress=False)
    assert (tmp_path / "ckpt" / kept.run_ids[0] / "meta.json").is_file()


# ----- claims: a cell held by another process is not run twice -----------------------------------------------
def test_a_cell_claimed_elsewhere_is_waited_for_and_then_skipped_when_finished(tmp_path):
    import threading

    from harness.engine import run
    from harness.studies import load_study, run_study
    from harness.studies.claims import Claim, claim_path

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    spec = {"name": "cl", "base": {"rounds": 2, "join_ratio": 0.5, "data": {"source": "digits"},
                                   "partition": {"scheme": "dirichlet", "num_clients": 10, "alpha": 0.5},
                                   "model": {"name": "mlp", "options": {"hidden": 16}},
                                   "workers": {"num_workers": 1, "use_ray": False}},
            "grid": {"seed": [0, 1, 2]}}
    extra = [f"checkpoint_dir={tmp_path}/ckpt", f"partition.cache_dir={tmp_path}/cache"]
    study = load_study(spec, extra, tracking_uri=uri)
    other = Claim(claim_path(study, study.cells[0]))  # "another study" holds cell 1 (a flock: per open file)
    assert other.acquire(wait=False)
    result = {}
    thread = threading.Thread(target=lambda: result.update(out=run_study(study, progress=False)))
    thread.start()
    try:
        deadline = time.monotonic() + 120
        client = MlflowClient(uri)
        while time.monotonic() < deadline:  # the study runs cells 2 and 3 meanwhile
            exp = client.get_experiment_by_name("cl")
            if exp and len(client.search_runs([exp.experiment_id], "attributes.status = 'FINISHED'")) == 2:
                break
            time.sleep(0.2)
        assert Claim(claim_path(study, study.cells[0])).held_elsewhere()
        assert thread.is_alive()  # waiting for cell 1
        run(study.cells[0].config, tags=study.tags(study.cells[0]), progress=False)  # the other study's run
    finally:
        other.release()
        thread.join(timeout=120)
    out = result["out"]
    assert out.skipped == [0] and sorted(out.ran) == [1, 2]
    runs = MlflowClient(uri).search_runs([MlflowClient(uri).get_experiment_by_name("cl").experiment_id])
    assert len(runs) == 3 and {r.info.status for r in runs} == {"FINISHED"}


# ----- the README's cluster recipe, as written ---------------------------------------------------------------
def _readme_recipe() -> list[str]:
    """The command lines of the README's cluster recipe (its first bash block), comments dropped."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Ray: one laptop or an existing cluster", 1)[1].split("\n## ", 1)[0]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    return [line.split(" #", 1)[0].strip() for line in block.splitlines() if line.strip()]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_the_readme_cluster_recipe_works_as_written(tmp_path):
    """Two `ray start` nodes on this machine, as the README says, with what one machine needs on top: each
    node its own temp dir and ports (another Ray may run here), HEAD_IP and 6379 filled in, a small run."""
    import ray

    from harness.engine.reaper import sweep

    head_ip, port = ray.util.get_node_ip_address(), _free_port()
    dirs = [tempfile.mkdtemp(prefix="fhh", dir="/tmp"), tempfile.mkdtemp(prefix="fhw", dir="/tmp")]
    node_options = [f"--temp-dir={dirs[0]} --dashboard-port={_free_port()} --ray-client-server-port={_free_port()} "
                    f"--dashboard-agent-listen-port={_free_port()} --disable-usage-stats",
                    f"--temp-dir={dirs[1]} --dashboard-agent-listen-port={_free_port()} --disable-usage-stats"]
    run_options = (f"rounds=2 eval_every=1 partition.num_clients=10 tracking.uri=sqlite:///{tmp_path}/mlflow.db "
                   f"checkpoint_dir={tmp_path}/ckpt partition.cache_dir={tmp_path}/cache --quiet")
    lines = []
    for line in _readme_recipe():
        line = line.replace("HEAD_IP", head_ip).replace("6379", str(port))
        if line.startswith("ray start"):
            line += " " + node_options[len([x for x in lines if x.startswith("ray start")])]
        if line.startswith("fedharness run"):
            line += " " + run_options
        lines.append(line)
    assert [x.split()[:2] for x in lines] == [["export", "RAY_AUTH_MODE=token"], ["ray", "get-auth-token"],
                                              ["ray", "start"], ["ray", "start"], ["fedharness", "run"]]
    env = {k: v for k, v in _env().items() if not k.startswith(("RAY_AUTH", "RAY_ADDRESS", "RAY_TMPDIR"))}
    env |= {"HOME": str(tmp_path / "home"), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"}
    (tmp_path / "home").mkdir()
    script = "set -e\n" + "\n".join(lines) + f"\nray status --address={head_ip}:{port}\n"
    gpu = (f"fedharness run runs/quickstart.yaml workers.address={head_ip}:{port} workers.num_gpus=1 "
           f"{run_options}")
    try:
        proc = subprocess.run(["bash", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, out[-4000:]
        assert "Traceback" not in out and "| fedavg" in out  # the run's table
        status = proc.stdout.split("Active:", 1)[1].split("Pending:", 1)[0]
        assert status.count("node_") == 2, status  # both nodes joined
        assert (tmp_path / "home" / ".ray" / "auth_token").is_file()
        # what the cluster lacks is one line, not a run that waits forever
        bad = subprocess.run(["bash", "-c", "export RAY_AUTH_MODE=token\n" + gpu], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=300)
        assert bad.returncode == 2 and "Traceback" not in bad.stderr, bad.stderr[-3000:]
        assert "workers.num_gpus=1 each do not fit" in bad.stderr and "0 GPUs on 2 node(s)" in bad.stderr
        # and a driver without the token is refused in one line that says what to do
        refused = subprocess.run(["bash", "-c", gpu.replace("workers.num_gpus=1", "workers.num_gpus=0")], cwd=ROOT,
                                 env=env, capture_output=True, text=True, timeout=300)
        assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr[-3000:]
        assert "cannot join the Ray cluster" in refused.stderr and "RAY_AUTH_MODE=token" in refused.stderr
    finally:
        for d in dirs:
            sweep(d)  # the nodes' processes (never `ray stop`: it would stop every Ray on this machine)
            shutil.rmtree(d, ignore_errors=True)


# ----- data.root is not trusted: nothing is unpickled or unpacked unless it has torchvision's checksum ----------
class _Payload:
    """Unpickling this writes a marker file: what a crafted CIFAR batch could do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pwned"))


def test_a_tampered_cifar_batch_is_refused_before_it_is_unpickled(tmp_path):
    import pickle

    from partitions.sources.vision import cifar10
    from partitions.spec import DataSpec

    marker = tmp_path / "marker"
    folder = tmp_path / "data" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch",
                 "batches.meta"):
        (folder / name).write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(FileNotFoundError) as err:
        cifar10(DataSpec(source="cifar10", root=str(tmp_path / "data"), cache_dir=str(tmp_path / "cache")))
    assert "corrupted" in str(err.value) and "\n" not in str(err.value)
    assert not marker.exists()  # torchvision checked the md5s it ships before unpickling anything


def test_a_tampered_cifar_archive_is_refused_before_it_is_unpacked(tmp_path):
    import io
    import tarfile

    from partitions.sources.vision import cifar10
    from partitions.spec import DataSpec

    root = tmp_path / "data"
    root.mkdir()
    with tarfile.open(root / "cifar-10-python.tar.gz", "w:gz") as tar:
        info = tarfile.TarInfo("../../escaped.txt")  # a member that points outside the unpack folder
        info.size = 5
        tar.addfile(info, io.BytesIO(b"hello"))
    with pytest.raises(ValueError, match="is not the original archive") as err:
        cifar10(DataSpec(source="cifar10", root=str(root), cache_dir=str(tmp_path / "cache" / "x" / "y")))
    assert "\n" not in str(err.value)
    assert not list(tmp_path.rglob("escaped.txt"))
