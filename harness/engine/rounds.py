"""The training part of one round, as a value: sample -> prepare (server) -> train (workers) ->
settle the clock -> aggregate.

`train_round` reads the sampled clients' states from the store and returns the next global model
with everything the loop needs (metrics, the per-client log rows, the states to commit); it writes
nothing. Clients go out in waves of at most CHUNK x W so the driver never holds more client states
than that.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from protocol.messages import ClientJob, ClientUpdate, State

CHUNK = 64  # clients per remote call: bounds the driver's memory for full-model states


class RunFailed(RuntimeError):
    """A fatal condition of the run itself (not a bug), in one line: a diverged client under nan_policy=fail, a
    round without a surviving update, a batch whose workers kept dying. The engine sets `run_id`."""

    run_id: str | None = None


@dataclass
class RoundOutcome:
    global_vec: np.ndarray
    metrics: dict[str, float]
    client_rows: list[dict]
    new_states: dict[int, State]  # the kept clients' states, to commit with the round
    totals: dict[str, float]  # sim_time and bytes totals after this round
    timings: dict[str, float] = field(default_factory=dict)


def waves(cids: list[int], num_workers: int, sizes: np.ndarray,
          units: list[list[int]] | None = None) -> list[list[list[int]]]:
    """Sorted clients in waves of at most CHUNK x W (contiguous in client id, so the server side
    sees clients in id order whatever W is); within a wave, one batch per worker, balanced by
    data size (largest first onto the least-loaded worker), each batch in client-id order.
    `units` (batched training: the round's cohorts, `cohorts`) are kept whole: waves and batches are
    made of whole cohorts, balanced by a cohort's total data size (a cohort step computes only the clients that
    still have a batch, so a cohort costs the sum of its clients' steps, not its clients x its longest)."""
    units = [[int(c)] for c in cids] if units is None else units
    out = []
    step = max(1, num_workers * CHUNK // max((len(u) for u in units), default=1))
    for start in range(0, len(units), step):
        wave = units[start : start + step]
        bins: list[list[int]] = [[] for _ in range(min(num_workers, len(wave)))]
        load = [0] * len(bins)
        costs = [(sum(int(sizes[c]) for c in unit), unit) for unit in wave]
        for cost, unit in sorted(costs, key=lambda cu: (-cu[0], cu[1][0])):
            slot = min(range(len(bins)), key=lambda b: (load[b], b))
            bins[slot].extend(int(c) for c in unit)
            load[slot] += cost
        out.append([sorted(b) for b in bins])
    return out


def cohorts(cids: list[int], steps: dict[int, int], size: int) -> list[list[int]]:
    """Batched training's cohorts: the round's clients ordered by their planned local steps (then id), cut into
    chunks of `size`, each in id order. A function of the round's sample and plan alone, never of the worker
    count. Similar step counts together keep a cohort's steps full: a step computes only the clients that still
    have a batch (CohortTrainer), and the fewer of them, the less a step gains from batching."""
    order = sorted((int(c) for c in cids), key=lambda c: (steps[c], c))
    return [sorted(order[i : i + size]) for i in range(0, len(order), size)]


def train_round(rnd: int, *, algo, clock, store, data, k: int, global_vec: np.ndarray, totals: dict[str, float],
                executor, nan_policy: str, cohort_size: int = 0, epochs: int = 1,
                batch_size: int = 1) -> RoundOutcome:
    """One round's training; `cohort_size` > 0: batched training, the clients go out in cohorts (`cohorts`, by
    planned steps = `epochs` x batches of `batch_size`, capped by the step budget)."""
    t_round = time.perf_counter()
    timings = {"map_train": 0.0, "store_get": 0.0}
    sampled = clock.sample(rnd, data.train_clients, k)
    est_bytes = 4 * int(algo.shared.sum())
    plan = clock.plan(sampled, est_bytes, est_bytes)
    down: dict[int, int] = {}
    notes: dict[int, dict] = {}
    updates: list[ClientUpdate] = []
    sizes = data.sizes("train")
    units, cohort_of = None, {}
    if cohort_size:
        planned = {int(c): min(epochs * -(-int(sizes[c]) // batch_size),
                               plan.max_steps[c] if plan.max_steps[c] is not None else 1 << 62)
                   for c in plan.clients.tolist()}
        units = cohorts(plan.clients.tolist(), planned, cohort_size)
        cohort_of = {c: i for i, unit in enumerate(units) for c in unit}
    # states are read and jobs built one wave at a time: the driver holds at most CHUNK x W of them
    for batch_group in waves(plan.clients.tolist(), executor.num_workers, sizes, units):
        wave = sorted(c for chunk in batch_group for c in chunk)
        t = time.perf_counter()
        states = store.get_many(wave)
        timings["store_get"] += time.perf_counter() - t
        jobs = {}
        for cid in wave:  # server side in client-id order
            sent = algo.server_prepare(cid, rnd, global_vec, states.pop(cid))
            jobs[cid] = ClientJob(cid, rnd, sent.payload, sent.state, plan.max_steps[cid], cohort_of.get(cid))
            notes[cid] = sent.note
            down[cid] = algo.bytes_down(sent.payload)
        t = time.perf_counter()
        results = executor.map("train", [[jobs[c] for c in chunk] for chunk in batch_group])
        timings["map_train"] += time.perf_counter() - t
        updates.extend(u for part in results for u in part)
    updates.sort(key=lambda u: u.cid)
    trained = updates
    bad = [u.cid for u in updates if not u.finite]
    if bad and nan_policy == "fail":
        raise RunFailed(f"round {rnd + 1}: client(s) {bad} produced NaN/inf (nan_policy=fail)")
    updates = [u for u in updates if u.finite]
    up = {u.cid: algo.bytes_up(u) for u in updates}
    times = {u.cid: clock.client_seconds(u.cid, u.samples_processed, down[u.cid], up[u.cid]) for u in updates}
    kept_ids, late, round_time = clock.settle(times, k, len(plan.dropped_before))
    kept_set = set(kept_ids)
    kept = [u for u in updates if u.cid in kept_set]
    rows = [{"round": rnd + 1, "client": u.cid, "steps": u.steps, "samples_processed": u.samples_processed,
             "sim_seconds": times[u.cid], "bytes_down": down[u.cid], "bytes_up": up[u.cid],
             "outcome": "kept" if u.cid in kept_set else "late"} for u in updates]
    rows += [{"round": rnd + 1, "client": c, "outcome": "nonfinite"} for c in bad]
    rows += [{"round": rnd + 1, "client": c, "outcome": "no_time"} for c in plan.dropped_before]
    t = time.perf_counter()
    new_global = algo.aggregate(global_vec, kept, notes)
    timings["aggregate"] = time.perf_counter() - t
    n = sum(u.num_samples for u in kept)
    bytes_down = float(sum(down.values()))
    bytes_up = float(sum(up[c] for c in kept_ids))
    totals = {"sim_time": totals["sim_time"] + round_time, "bytes_up_total": totals["bytes_up_total"] + bytes_up,
              "bytes_down_total": totals["bytes_down_total"] + bytes_down}
    metrics = {
        **sampled_accuracy(trained),
        "train_loss": float(sum(u.loss * u.num_samples for u in kept) / n) if n else float("nan"),
        "clients_sampled": float(len(sampled)), "clients_trained": float(len(trained)),
        "clients_kept": float(len(kept)), "clients_dropped": float(len(plan.dropped_before)),
        "clients_late": float(len(late)), "clients_nonfinite": float(len(bad)),
        "local_steps_mean": float(np.mean([u.steps for u in kept])) if kept else 0.0,
        "sim_round_time": round_time, "bytes_up": bytes_up, "bytes_down": bytes_down, **totals,
        **algo.round_metrics(notes), **client_metric_means(kept),
    }
    timings["train"] = time.perf_counter() - t_round
    return RoundOutcome(new_global, metrics, rows, {u.cid: u.state for u in kept}, totals, timings)


def client_metric_means(updates: list[ClientUpdate]) -> dict[str, float]:
    """Round means of what algorithms report per client (APFL's alpha, Ditto's personal loss, ...)."""
    keys = sorted({k for u in updates for k in u.metrics})
    out = {}
    for key in keys:
        values = [u.metrics[key] for u in updates if key in u.metrics and np.isfinite(u.metrics[key])]
        if values:
            out[f"client_{key}_mean"] = float(np.mean(values))
    return out


def sampled_accuracy(updates: list[ClientUpdate]) -> dict[str, float]:
    """FL-bench's per-round accuracy_test_before/after: correct / samples pooled over the test splits of every
    client that trained this round (kept or not), before and after its local training."""
    rows = [u.sampled_eval for u in updates if u.sampled_eval is not None]
    total = sum(r[2] for r in rows)
    if not total:
        return {}
    return {"sampled_acc_before": sum(r[0] for r in rows) / total, "sampled_acc_after": sum(r[1] for r in rows) / total}
