"""The round loop: sample -> prepare (server) -> train (workers) -> settle clock -> aggregate
-> commit client states -> evaluate -> log -> checkpoint.

A run is resumable after any crash: each round ends with an atomic checkpoint (global model,
client-state store, clock totals, metric history); every random draw is derived from
(seed, purpose, round, client), so nothing else needs saving for a bit-identical resume.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from algorithms.base import ClientJob, ClientUpdate
from harness import interrupts
from harness.budgets import DeviceProfiles, VirtualClock
from harness.config import RunConfig, validate
from harness.evaluation import evaluation_metrics
from harness.executor import make_executor
from harness.progress import RoundProgress
from harness.store import DiskStore, MemoryStore, make_store
from harness.tracking import Tracker
from harness.worker import build_algorithm
from partitions import build_federated_dataset
from partitions.stats import partition_summary, save_partition_artifacts

log = logging.getLogger(__name__)
CHUNK = 64  # clients per remote call: bounds the driver's memory for full-model states
CLIENT_LOG_COLUMNS = ["round", "client", "steps", "samples_processed", "sim_seconds", "bytes_down", "bytes_up",
                      "outcome"]


class RunFailed(RuntimeError):
    """A fatal condition of the run itself (not a bug): e.g. a diverged client under nan_policy=fail."""


@dataclass
class RunResult:
    run_id: str | None
    config: RunConfig
    history: list[dict[str, float]] = field(default_factory=list)
    final: dict[str, float] = field(default_factory=dict)
    clients: pd.DataFrame | None = None
    global_vec: np.ndarray | None = None
    client_log: pd.DataFrame | None = None


def run(cfg: RunConfig, tags: dict[str, str] | None = None, progress: bool = True,
        stop_after: int | None = None, executor_factory=make_executor) -> RunResult:
    """Start a run. `stop_after` ends the loop early, leaving a resumable run (as a crash would);
    `executor_factory(cfg, data)` lets tests inject faults into the worker pool."""
    return Engine(cfg, tags=tags, progress=progress).loop(stop_after=stop_after, executor_factory=executor_factory)


def resume(run_id: str, checkpoint_dir: str = ".fedharness/checkpoints", progress: bool = True) -> RunResult:
    meta_path = Path(checkpoint_dir) / run_id / "meta.json"
    if not meta_path.exists():
        raise FileNotFoundError(f"no checkpoint for run {run_id!r} under {checkpoint_dir} (looked for {meta_path})")
    meta = json.loads(meta_path.read_text())
    return Engine(validate(meta["config"]), progress=progress, resume_meta=meta).loop()


def _waves(cids: list[int], num_workers: int, sizes: np.ndarray) -> list[list[list[int]]]:
    """Sorted clients in waves of at most CHUNK x W (contiguous in client id, so the server side
    sees clients in id order whatever W is); within a wave, one batch per worker, balanced by
    data size (largest first onto the least-loaded worker), each batch in client-id order."""
    waves = []
    step = num_workers * CHUNK
    for start in range(0, len(cids), step):
        wave = cids[start : start + step]
        bins: list[list[int]] = [[] for _ in range(min(num_workers, len(wave)))]
        load = [0] * len(bins)
        for cid in sorted(wave, key=lambda c: (-int(sizes[c]), c)):
            slot = min(range(len(bins)), key=lambda b: (load[b], b))
            bins[slot].append(int(cid))
            load[slot] += int(sizes[cid])
        waves.append([sorted(b) for b in bins])
    return waves


class Engine:
    def __init__(self, cfg: RunConfig, tags: dict[str, str] | None = None, progress: bool = True,
                 resume_meta: dict | None = None):
        self.cfg = cfg
        self.data = build_federated_dataset(cfg.data, cfg.partition, cfg.seed)
        self.algo, _, self.global_vec = build_algorithm(cfg, self.data)
        self.unseen = set(self.data.meta.get("unseen_clients", []))
        profiles = DeviceProfiles.draw(cfg.budget, self.data.num_clients, cfg.seed)
        self.clock = VirtualClock(cfg.budget, profiles, cfg.train.batch_size, cfg.seed)
        self.k = cfg.sampled_per_round(len(self.data.train_clients))
        self.progress = progress
        self.start_round = 0
        self._pending_states: dict[int, dict] = {}
        self.history: list[dict[str, float]] = []
        self.totals = {"sim_time": 0.0, "bytes_up_total": 0.0, "bytes_down_total": 0.0}
        self.tracker = None
        if cfg.tracking.enabled:
            run_id = resume_meta["run_id"] if resume_meta else None
            named = {"fedharness.dataset": self.data.name, **(tags or {})}  # e.g. cifar10_jpeg_blob, not "arrays"
            self.tracker = Tracker(cfg, tags=named, run_id=run_id)
        if self.tracker:
            self.run_id = self.tracker.run_id
        else:
            self.run_id = resume_meta["run_id"] if resume_meta else f"local-{int(time.time() * 1000)}"
        self.ckpt = Path(cfg.checkpoint_dir) / self.run_id
        self.ckpt.mkdir(parents=True, exist_ok=True)
        store_path = cfg.store.path or (self.ckpt / "store")
        self.store = make_store(cfg.store.backend, store_path)
        if resume_meta:
            self._restore(resume_meta)
        elif self.tracker:
            self._log_start_artifacts()

    # ----- checkpoint ---------------------------------------------------------------------------
    def _meta(self, done_round: int) -> dict:
        return {"run_id": self.run_id, "config": self.cfg.model_dump(mode="json"), "done_round": done_round,
                "history": self.history, "totals": self.totals, "algo_server_state": {}}

    def _write_checkpoint(self, done_round: int) -> None:
        np.save(self.ckpt / "global.tmp.npy", self.global_vec, allow_pickle=False)
        os.replace(self.ckpt / "global.tmp.npy", self.ckpt / "global.npy")
        if isinstance(self.store, MemoryStore):
            self.store.save(self.ckpt / "store.npz")
        tmp = self.ckpt / "meta.tmp.json"
        tmp.write_text(json.dumps(self._meta(done_round)))
        os.replace(tmp, self.ckpt / "meta.json")  # the commit point of the round

    def _checkpoint_due(self, rnd: int, final: bool) -> bool:
        """A disk store checkpoints every round: its commit *is* the checkpoint and costs only the
        round's clients. A memory store snapshots all of its states, so it honours checkpoint_every
        (a resume then replays the rounds since the last snapshot; determinism makes them identical)."""
        return isinstance(self.store, DiskStore) or final or (rnd + 1) % self.cfg.checkpoint_every == 0

    @property
    def client_log_path(self) -> Path:
        return self.ckpt / "client_rounds.csv"

    def _append_client_log(self) -> None:
        """Per client and round: steps, simulated seconds, bytes, kept/late/dropped (an artifact)."""
        frame = pd.DataFrame(self._client_rows, columns=CLIENT_LOG_COLUMNS)
        frame.to_csv(self.client_log_path, mode="a", header=not self.client_log_path.exists(), index=False)

    def client_log(self) -> pd.DataFrame:
        if not self.client_log_path.exists():
            return pd.DataFrame(columns=CLIENT_LOG_COLUMNS)
        return pd.read_csv(self.client_log_path)

    def _restore(self, meta: dict) -> None:
        done = meta["done_round"]
        log_frame = self.client_log()
        log_frame[log_frame["round"] <= done + 1].to_csv(self.client_log_path, index=False)
        self.start_round = done + 1
        self.history = meta["history"]
        self.totals = meta["totals"]
        if done >= 0:
            self.global_vec = np.load(self.ckpt / "global.npy", allow_pickle=False)
        if isinstance(self.store, DiskStore):
            self.store.recover(done)
        else:
            self.store.load(self.ckpt / "store.npz")

    # ----- one round ---------------------------------------------------------------------------
    def _train_round(self, rnd: int, executor) -> dict[str, float]:
        sampled = self.clock.sample(rnd, self.data.train_clients, self.k)
        est_bytes = 4 * int(self.algo.shared.sum())
        plan = self.clock.plan(sampled, est_bytes, est_bytes)
        down: dict[int, int] = {}
        updates: list[ClientUpdate] = []
        # states are read and jobs built one wave at a time: the driver holds at most CHUNK x W of them
        for batch_group in _waves(plan.clients.tolist(), executor.num_workers, self.data.sizes("train")):
            wave = sorted(c for chunk in batch_group for c in chunk)
            states = self.store.get_many(wave)
            jobs = {}
            for cid in wave:  # server side in client-id order
                payload, state = self.algo.server_prepare(cid, rnd, self.global_vec, states.pop(cid))
                jobs[cid] = ClientJob(cid, rnd, payload, state, plan.max_steps[cid])
                down[cid] = self.algo.bytes_down(payload)
            results = executor.map("train", [[jobs[c] for c in chunk] for chunk in batch_group])
            updates.extend(u for part in results for u in part)
        updates.sort(key=lambda u: u.cid)
        updates_all = updates
        trained = len(updates)
        bad = [u.cid for u in updates if not u.finite]
        if bad and self.cfg.nan_policy == "fail":
            raise RunFailed(f"round {rnd + 1}: client(s) {bad} produced NaN/inf (nan_policy=fail)")
        updates = [u for u in updates if u.finite]
        up = {u.cid: self.algo.bytes_up(u) for u in updates}
        times = {u.cid: self.clock.client_seconds(u.cid, u.samples_processed, down[u.cid], up[u.cid]) for u in updates}
        kept_ids, late, round_time = self.clock.settle(times, self.k)
        if plan.dropped_before and self.cfg.budget.mode == "deadline":
            round_time = float(self.cfg.budget.deadline_s)
        kept_set = set(kept_ids)
        kept = [u for u in updates if u.cid in kept_set]
        self._client_rows = [
            {"round": rnd + 1, "client": u.cid, "steps": u.steps, "samples_processed": u.samples_processed,
             "sim_seconds": times[u.cid], "bytes_down": down[u.cid], "bytes_up": up[u.cid],
             "outcome": "kept" if u.cid in kept_set else "late"} for u in updates]
        self._client_rows += [{"round": rnd + 1, "client": c, "outcome": "nonfinite"} for c in bad]
        self._client_rows += [{"round": rnd + 1, "client": c, "outcome": "no_time"} for c in plan.dropped_before]
        self.global_vec = self.algo.aggregate(self.global_vec, kept)
        self._pending_states = {u.cid: u.state for u in kept}
        n = sum(u.num_samples for u in kept)
        bytes_down = float(sum(down.values()))
        bytes_up = float(sum(up[c] for c in kept_ids))
        self.totals["sim_time"] += round_time
        self.totals["bytes_up_total"] += bytes_up
        self.totals["bytes_down_total"] += bytes_down
        return {
            **_sampled_accuracy(updates_all),
            "train_loss": float(sum(u.loss * u.num_samples for u in kept) / n) if n else float("nan"),
            "clients_sampled": float(len(sampled)), "clients_trained": float(trained),
            "clients_kept": float(len(kept)), "clients_dropped": float(len(plan.dropped_before)),
            "clients_late": float(len(late)), "clients_nonfinite": float(len(bad)),
            "local_steps_mean": float(np.mean([u.steps for u in kept])) if kept else 0.0,
            "sim_round_time": round_time, "bytes_up": bytes_up, "bytes_down": bytes_down, **self.totals,
            **self.algo.round_metrics(), **_client_metric_means(kept),
        }

    def _evaluate(self, rnd: int, executor) -> tuple[dict[str, float], pd.DataFrame]:
        evals = []
        all_clients = list(range(self.data.num_clients))
        for batch_group in _waves(all_clients, executor.num_workers, self.data.sizes("test")):
            wave = [c for chunk in batch_group for c in chunk]
            states = self.store.get_many(wave)
            states |= {c: self._pending_states[c] for c in wave if c in self._pending_states}
            batches = [[ClientJob(c, rnd, {"model": self.global_vec}, states[c]) for c in chunk]
                       for chunk in batch_group]
            evals.extend(e for part in executor.map("evaluate", batches) for e in part)
        return evaluation_metrics(evals, self.unseen)

    # ----- the loop -------------------------------------------------------------------------------
    def loop(self, stop_after: int | None = None, executor_factory=make_executor) -> RunResult:
        cfg = self.cfg
        result = RunResult(self.run_id, cfg, self.history)
        executor = None
        bar = RoundProgress(cfg.rounds, self.start_round, enabled=self.progress, label=f"{cfg.algorithm.name}")
        status, reason = "FINISHED", None
        try:
            executor = executor_factory(cfg, self.data)
            if self.start_round == 0:
                self._write_checkpoint(-1)  # resumable even if the first round never finishes
            clients = None
            for rnd in range(self.start_round, cfg.rounds):
                interrupts.check()  # a Ctrl-C whose KeyboardInterrupt something swallowed
                t0 = time.perf_counter()
                metrics = self._train_round(rnd, executor)
                last = rnd == cfg.rounds - 1
                if (rnd + 1) % cfg.eval_every == 0 or last:
                    eval_metrics, clients = self._evaluate(rnd, executor)
                    metrics |= eval_metrics
                metrics["wall_round_time"] = time.perf_counter() - t0
                metrics = {k: float(v) for k, v in metrics.items()}
                self.history.append({"round": rnd + 1, **metrics})
                if self.tracker:
                    self.tracker.log_round(rnd + 1, metrics)
                self._append_client_log()
                stopping = stop_after is not None and rnd + 1 >= stop_after
                if self._checkpoint_due(rnd, last or stopping):
                    self.store.commit(self._pending_states, rnd, mark_done=lambda r=rnd: self._write_checkpoint(r))
                else:
                    self.store.commit(self._pending_states, rnd)
                bar.update(rnd + 1, metrics)
                if stop_after is not None and rnd + 1 >= stop_after and not last:
                    status = "RUNNING"  # interrupted on purpose; resumable
                    break
            else:
                result.clients = clients
                result.final = _final_metrics(self.history)
                if self.tracker:
                    self._log_end_artifacts(result)
        except KeyboardInterrupt:
            status, reason = "KILLED", "interrupted (Ctrl-C); resume with: fedharness resume " + self.run_id
            raise
        except Exception as err:  # noqa: BLE001 - recorded on the MLflow run, then re-raised
            status, reason = "FAILED", f"{type(err).__name__}: {err}"
            raise
        finally:
            bar.close()
            if executor is not None:
                executor.shutdown()
            if self.tracker and status != "RUNNING":
                self.tracker.end(status, reason)
        result.history = self.history
        result.global_vec = self.global_vec
        result.client_log = self.client_log()
        return result

    # ----- artifacts ------------------------------------------------------------------------------
    def _log_start_artifacts(self) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            cfg_path = Path(tmp) / "config.yaml"
            cfg_path.write_text(yaml.safe_dump(self.cfg.model_dump(mode="json"), sort_keys=False))
            self.tracker.log_artifact(cfg_path)
            for path in save_partition_artifacts(self.data, Path(tmp)):
                self.tracker.log_artifact(path, "partition")
            summary = partition_summary(self.data)
            self.tracker.set_tags({f"partition.{k}": v for k, v in summary.items()})

    def _log_end_artifacts(self, result: RunResult) -> None:
        from harness.plots import plot_run_curves

        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            if result.clients is not None:
                result.clients.to_csv(tmp / "clients_final.csv", index=False)
                self.tracker.log_artifact(tmp / "clients_final.csv")
            pd.DataFrame(self.history).to_csv(tmp / "history.csv", index=False)
            self.tracker.log_artifact(tmp / "history.csv")
            self.tracker.log_artifact(self.client_log_path)
            best = {k: v for k, v in result.final.items() if k.startswith("best_")}
            self.tracker.log_round(int(self.history[-1]["round"]), best)
            plot_run_curves(self.history, tmp / "accuracy.png", title=f"{self.cfg.name} — {self.cfg.algorithm.name}")
            self.tracker.log_artifact(tmp / "accuracy.png")

    def cleanup_checkpoint(self) -> None:
        shutil.rmtree(self.ckpt, ignore_errors=True)


def _client_metric_means(updates: list[ClientUpdate]) -> dict[str, float]:
    """Round means of what algorithms report per client (APFL's alpha, Ditto's personal loss, ...)."""
    keys = sorted({k for u in updates for k in u.metrics})
    out = {}
    for key in keys:
        values = [u.metrics[key] for u in updates if key in u.metrics and np.isfinite(u.metrics[key])]
        if values:
            out[f"client_{key}_mean"] = float(np.mean(values))
    return out



def _sampled_accuracy(updates: list[ClientUpdate]) -> dict[str, float]:
    """FL-bench's per-round accuracy_test_before/after: correct / samples pooled over the test splits of every
    client that trained this round (kept or not), before and after its local training."""
    rows = [u.sampled_eval for u in updates if u.sampled_eval is not None]
    total = sum(r[2] for r in rows)
    if not total:
        return {}
    return {"sampled_acc_before": sum(r[0] for r in rows) / total, "sampled_acc_after": sum(r[1] for r in rows) / total}


def _final_metrics(history: list[dict[str, float]]) -> dict[str, float]:
    """Final = last evaluated round; best_* = max over evaluated rounds (both reported, named)."""
    evaluated = [h for h in history if "personal_acc" in h]
    if not evaluated:
        return {}
    final = {k: v for k, v in evaluated[-1].items() if k != "round"}
    keys = ["personal_acc", "personal_acc_mean", "personal_acc_worst10", "global_acc"]
    keys += ["personal_ft_acc"] if "personal_ft_acc" in evaluated[-1] else []
    for key in keys:
        values = np.array([h[key] for h in evaluated], dtype=np.float64)
        final[f"best_{key}"] = float(np.nanmax(values)) if not np.isnan(values).all() else float("nan")
    final["rounds"] = float(history[-1]["round"])
    return final
