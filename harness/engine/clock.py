"""Compute budgets and the virtual clock (FedScale-style; nothing ever sleeps).

Each client has a device profile: compute speed (seconds per training sample), upload and
download bandwidth, availability, and optionally a per-round step budget from its tier.
A client's simulated round time is  samples processed x s/sample + bytes down / down-rate +
bytes up / up-rate.  Budget modes:

* fixed      - every sampled client does its full local work; time is only simulated;
* deadline   - each client gets the optimizer steps that fit before `deadline_s`
               (partial_work=true), or does the full work and is dropped if it finishes late
               (partial_work=false); clients that cannot finish `min_steps` are dropped;
* overcommit - (1 + overcommit) x K clients are sampled, the first K finishers are kept.
All draws come from seeded streams, so the clock is identical across worker counts and resumes.
"""

from __future__ import annotations

import csv
import math
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harness.config import BudgetSpec
from protocol.rng import rng

MBPS = 1e6 / 8  # bytes per second in one megabit per second


@dataclass
class DeviceProfiles:
    seconds_per_sample: np.ndarray
    upload_bps: np.ndarray
    download_bps: np.ndarray
    availability: np.ndarray
    max_steps: np.ndarray  # -1 = no tier step budget
    tier: np.ndarray

    @classmethod
    def draw(cls, spec: BudgetSpec, num_clients: int, seed: int) -> DeviceProfiles:
        d = spec.devices
        gen = rng(seed, "devices")
        n = num_clients
        tier = np.zeros(n, dtype=np.int64)
        max_steps = np.full(n, -1, dtype=np.int64)
        avail = np.full(n, d.availability)
        if d.distribution == "uniform":
            spp, up, down = np.full(n, d.seconds_per_sample), np.full(n, d.upload_mbps), np.full(n, d.download_mbps)
        elif d.distribution == "lognormal":
            spp = d.seconds_per_sample * np.exp(d.sigma * gen.standard_normal(n))
            up = d.upload_mbps * np.exp(d.sigma * gen.standard_normal(n))
            down = d.download_mbps * np.exp(d.sigma * gen.standard_normal(n))
        elif d.distribution == "tiers":
            if not d.tiers:
                raise ValueError("budget.devices.distribution=tiers needs budget.devices.tiers")
            frac = np.array([t.fraction for t in d.tiers])
            tier = gen.choice(len(d.tiers), size=n, p=frac / frac.sum())
            spp = np.array([t.seconds_per_sample for t in d.tiers])[tier]
            up = np.array([t.upload_mbps for t in d.tiers])[tier]
            down = np.array([t.download_mbps for t in d.tiers])[tier]
            max_steps = np.array([t.max_steps or -1 for t in d.tiers])[tier]
        else:  # trace
            rows = read_trace(d.trace_file)
            pick = gen.integers(0, len(rows["seconds_per_sample"]), size=n)
            spp, up, down = (rows[k][pick] for k in ("seconds_per_sample", "upload_mbps", "download_mbps"))
            if "availability" in rows:
                avail = rows["availability"][pick]
        return cls(spp.astype(float), up * MBPS, down * MBPS, avail.astype(float), max_steps, tier)


def read_trace(path: str | None) -> dict[str, np.ndarray]:
    """The device trace: every value a finite number, speeds and bandwidths > 0, availability in [0, 1]
    (errors name the file, the line and the column)."""
    if not path or not Path(path).is_file():
        raise ValueError(f"budget.devices.trace_file {path!r} does not exist")
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except (UnicodeDecodeError, csv.Error) as err:
        raise ValueError(f"trace {path!r} is not a CSV text file ({type(err).__name__})") from None
    need = {"seconds_per_sample", "upload_mbps", "download_mbps"}
    if not rows or not need <= set(rows[0]):
        raise ValueError(f"trace {path!r} needs columns {sorted(need)} (optional: availability)")
    cols = [c for c in rows[0] if c in need | {"availability"}]
    out = {c: np.empty(len(rows)) for c in cols}
    for line, row in enumerate(rows, start=2):  # line 1 is the header
        for c in cols:
            try:
                value = float(row[c])
            except (TypeError, ValueError):
                raise ValueError(f"trace {path!r} line {line}: {c}={row[c]!r} is not a number") from None
            ok = 0 <= value <= 1 if c == "availability" else math.isfinite(value) and value > 0
            if not ok:
                raise ValueError(f"trace {path!r} line {line}: {c}={value} must be "
                                 f"{'in [0, 1]' if c == 'availability' else 'a positive finite number'}")
            out[c][line - 2] = value
    return out


@dataclass
class RoundPlan:
    clients: np.ndarray  # sampled and trained, sorted
    max_steps: dict[int, int | None]
    dropped_before: list[int]  # could not fit min_steps before the deadline


class VirtualClock:
    def __init__(self, spec: BudgetSpec, profiles: DeviceProfiles, batch_size: int, seed: int,
                 sampling: str = "uniform"):
        self.spec = spec
        self.p = profiles
        self.batch_size = batch_size
        self.seed = seed
        self.sampling = sampling
        self._flbench: tuple[random.Random, int] | None = None  # FL-bench's stream and the rounds drawn from it

    def available(self, round: int, candidates: np.ndarray) -> np.ndarray:
        online = rng(self.seed, "availability", round).random(len(self.p.availability)) < self.p.availability
        return candidates[online[candidates]]

    def sample(self, round: int, candidates: np.ndarray, k: int) -> np.ndarray:
        """Clients asked to train this round (K, or (1+overcommit)K in overcommit mode)."""
        if self.sampling == "flbench":
            return self._flbench_sample(round, candidates, k)
        pool = self.available(round, candidates)
        if self.spec.mode == "overcommit":
            k = math.ceil(k * (1 + self.spec.overcommit))
        k = min(k, len(pool))
        return np.sort(rng(self.seed, "sample", round).choice(pool, size=k, replace=False))

    def _flbench_sample(self, round: int, candidates: np.ndarray, k: int) -> np.ndarray:
        """FL-bench's client stream: Python's random seeded with the run seed, one random.sample(training clients,
        k) per round in order (its server draws them all up front). Round r (0-based, as the engine counts) is
        draw r + 1; a resumed run replays the earlier draws, so the stream depends on the round alone."""
        if self._flbench is None or self._flbench[1] > round:
            self._flbench = (random.Random(self.seed), 0)
        stream, drawn = self._flbench
        pool = [int(c) for c in candidates]
        chosen: list[int] = []
        while drawn <= round:
            chosen = stream.sample(pool, min(k, len(pool)))
            drawn += 1
        self._flbench = (stream, drawn)
        return np.sort(np.array(chosen, dtype=np.int64))

    def comm_seconds(self, cid: int, bytes_down: int, bytes_up: int) -> float:
        return bytes_down / self.p.download_bps[cid] + bytes_up / self.p.upload_bps[cid]

    def plan(self, clients: np.ndarray, bytes_down: int, bytes_up: int) -> RoundPlan:
        steps: dict[int, int | None] = {}
        dropped = []
        for cid in clients.tolist():
            limit = int(self.p.max_steps[cid]) if self.p.max_steps[cid] > 0 else None
            if self.spec.mode == "deadline" and self.spec.partial_work:
                spare = self.spec.deadline_s - self.comm_seconds(cid, bytes_down, bytes_up)
                fit = int(math.floor(spare / (self.p.seconds_per_sample[cid] * self.batch_size) + 1e-9))
                limit = fit if limit is None else min(limit, fit)
                if limit < self.spec.min_steps:
                    dropped.append(cid)
                    continue
            steps[cid] = limit
        return RoundPlan(np.array(sorted(steps), dtype=np.int64), steps, dropped)

    def client_seconds(self, cid: int, samples: int, bytes_down: int, bytes_up: int) -> float:
        return samples * float(self.p.seconds_per_sample[cid]) + self.comm_seconds(cid, bytes_down, bytes_up)

    def settle(self, times: dict[int, float], k: int, dropped_before: int = 0) -> tuple[list[int], list[int], float]:
        """(kept clients, late clients, simulated round time) after training. Under a deadline the round
        lasts until the deadline when anyone was late or could not start (dropped_before: clients that had
        no time for min_steps), else until the last kept client finishes."""
        order = sorted(times, key=lambda c: (times[c], c))
        if self.spec.mode == "deadline":
            kept = [c for c in order if times[c] <= self.spec.deadline_s + 1e-9]
            kept_set = set(kept)
            late = [c for c in order if c not in kept_set]
            waited = late or dropped_before
            round_time = self.spec.deadline_s if waited else max((times[c] for c in kept), default=0.0)
        elif self.spec.mode == "overcommit":
            kept, late = order[:k], order[k:]
            round_time = max((times[c] for c in kept), default=0.0)
        else:
            kept, late = order, []
            round_time = max(times.values(), default=0.0)
        return sorted(kept), sorted(late), float(round_time)
