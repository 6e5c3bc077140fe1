"""Batched multi-client training: a cohort of clients' plain SGD phases as one vectorised computation.

For small models, one client's step is mostly Python and kernel-launch overhead; training C clients at
once (torch.func: `functional_call` under `vmap` over the C clients' stacked weights) pays that overhead
once per step for the cohort. Each client keeps everything the one-by-one path gives it:

* its own data order (the same `rng(seed, purpose, round, client)` permutations, the same batches, the
  same step budget), padded to the cohort's batch shape, padded rows weighted 0 in its mean loss;
* its own SGD with momentum and weight decay on the stacked tensors, as torch.optim.SGD does it
  (buf = momentum * buf + (g + wd * w); w -= lr * buf; torch's fused kernel), applied only to the
  clients that have a batch at that step (a client with fewer steps simply stops moving);
* its own loss (cross-entropy mean + the phase's proximal term), counters, and stop on NaN/inf.

The numbers equal the one-by-one path's to float tolerance (the batched matmuls sum in another order),
not bit for bit; tests/test_batched.py states the tolerance. Cohort membership is decided by the driver
from the round's sample alone (rounds.cohorts), never by worker, so the floats do not depend on the
worker count. Which runs use it: `decide` (train.batched auto | on | off).

Algorithms opt in (`Algorithm.batchable`) when their client side is `run_phases` over `local_phases`: plain
SGD phases, each from a start model (or the previous phase's result), optionally over a subset of the tensors
and with a proximal term. In: FedAvg and every algorithm with
FedAvg's client side (FedAvgM, FedAdam/FedAdagrad/FedYogi, FedMedian/FedTrimmedAvg/Krum, DP-FedAvg, FedNova,
FedOBP, FedCAC: all of their differences run on the server or on the trained result), FedProx and FedAMP
(proximal term), FedPer, LG-FedAvg and pFedSim (joint training from the global shared part + their own
personal part), Local, Ditto (two phases, the second proximal), FedRep (head-only, then body-only from the
head's result), FedBABU (body only).
Out, each for a reason the phase declaration cannot express yet:
a gradient hook, projection or linear term (SCAFFOLD, FedDyn, FedSelect, Floco), a loss of their own or extra
model passes (MOON, FedProto, FedNTD, FedLC, FedRoD, pFedFDA, FLUTE, FedDPA, q-FFL's loss evaluation, IFCA's
cluster choice), custom loops or inner optimisers (APFL, FedALA, pFedMe, Per-FedAvg, FedFomo, Elastic, CFL), and
BatchNorm statistics (FedBN: no model with buffers or dropout trains batched).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap
from torch.optim.sgd import sgd

from harness.config import ConfigError
from protocol.messages import ClientJob, ClientUpdate
from protocol.rng import rng
from protocol.trainer import Phase, PhaseStats


def opts_in(cls) -> bool:
    """`batchable`, set at or below the class whose `local_update` runs: a subclass that overrides
    local_update (FedRep over FedPer) does not inherit its parent's opt-in."""
    if not cls.batchable:
        return False
    owner = next(k for k in cls.__mro__ if "local_update" in vars(k))
    flagger = next(k for k in cls.__mro__ if "batchable" in vars(k))
    return issubclass(flagger, owner)


def unsupported(algo, model: nn.Module, optimizer: str) -> str | None:
    """Why this run cannot train batched (None: it can)."""
    if not opts_in(type(algo)):
        return (f"{algo.name} does not opt in (its local step is not plain SGD phases: Algorithm.batchable, "
                f"harness/engine/batched.py)")
    if optimizer != "sgd":
        return f"train.optimizer={optimizer} (batched training implements SGD with momentum)"
    if any(True for _ in model.buffers()):
        return "the model has buffers (BatchNorm running statistics)"
    if any(isinstance(m, nn.modules.dropout._DropoutNd) for m in model.modules()):
        return "the model has dropout"
    return None


def has_conv(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.conv._ConvNd) for m in model.modules())


def decide(mode: str, algo, model: nn.Module, optimizer: str, device: torch.device) -> bool:
    """Whether a run trains its cohorts batched. `on` where it cannot: a one-line ConfigError. `auto`, the
    measured rule (docs/scale.md): on CUDA always; on the CPU only models without convolutions (an MLP
    cohort trained faster vmapped, an avgcnn cohort ~2.4x slower: vmapped convolutions lose the CPU's
    channels-last kernels)."""
    if mode == "off":
        return False
    why = unsupported(algo, model, optimizer)
    if mode == "on":
        if why:
            raise ConfigError(f"train.batched=on but {why}; use train.batched=auto or off")
        return True
    return why is None and (device.type == "cuda" or not has_conv(model))


class CohortTrainer:
    """Trains cohorts on a worker's LocalTrainer (its model, data, device and layout)."""

    def __init__(self, trainer) -> None:
        self.t = trainer
        model = trainer.model
        self.slots = trainer.spec.slots  # no buffers (unsupported): exactly the parameters, in model order
        self._forward = vmap(lambda params, x: functional_call(model, params, (x,)))
        # Linear weights are held stacked as (C, in, out) and handed to the model as (C, out, in) views: the
        # vmapped matmuls and their gradients then run on MKL's fast layout (a cohort step ~1.3x faster on the
        # FEMNIST MLP, bench/results/bench_batched.md); SGD is element-wise, so the numbers do not change
        self.transposed = {f"{name}.weight" for name, m in model.named_modules() if isinstance(m, nn.Linear)}

    def train(self, algo, jobs: list[ClientJob]) -> list[ClientUpdate]:
        """`algo.run_phases` for each job, the phases of all jobs trained together."""
        plans = [algo.local_phases(job) for job in jobs]
        if len({len(p) for p in plans}) != 1:
            raise RuntimeError(f"{algo.name}: clients of one cohort declared different numbers of phases")
        used = np.zeros(len(jobs), dtype=np.int64)
        finite = np.ones(len(jobs), dtype=bool)
        trained: list[list[np.ndarray]] = [[] for _ in jobs]
        stats: list[list[PhaseStats]] = [[] for _ in jobs]
        vecs = None
        for k in range(len(plans[0])):
            vecs, phase_stats = self._phase(jobs, [p[k] for p in plans], used, finite, vecs)
            for i in range(len(jobs)):
                trained[i].append(vecs[i])
                stats[i].append(phase_stats[i])
        out = []
        for i, job in enumerate(jobs):
            self.t.start(job)
            s = stats[i]
            self.t.credit(sum(p.steps for p in s), sum(p.samples for p in s), sum(p.loss_sum for p in s),
                          sum(p.loss_count for p in s), bool(finite[i]))
            out.append(algo.local_result(job, trained[i], s, self.t))
        return out

    def _schedule(self, job: ClientJob, epochs: int, purpose: str, room: int | None) -> list[np.ndarray]:
        """The client's batches of this phase, as LocalTrainer.batches draws and budgets them."""
        t = self.t
        index = t.data.split_of(job.cid, "train")
        if len(index) == 0:
            return []
        gen = rng(t.seed, purpose, job.round, job.cid)
        bs, out = t.train_spec.batch_size, []
        for _ in range(epochs):
            order = index[gen.permutation(len(index))]
            for start in range(0, len(order), bs):
                if room is not None and len(out) >= room:
                    return out
                out.append(order[start : start + bs])
        return out

    def _phase(self, jobs: list[ClientJob], phases: list[Phase], used: np.ndarray, finite: np.ndarray,
               previous: np.ndarray | None) -> tuple[np.ndarray, list[PhaseStats]]:
        """One phase of every client, from its `start` or else its `previous` phase's result (C, size); `used`
        (steps so far) and `finite` are updated in place. Only the phase's `names` get gradients and steps.

        The clients are held longest schedule first, so at every step the clients that still have a batch are a
        prefix of the stacked tensors: a step computes, and updates in place, only that prefix (views, no copies).
        Clients that finished their steps cost nothing more, which is what makes large cohorts of clients with
        unequal data (FEMNIST writers: 1-10 steps an epoch) pay."""
        t, spec, dev = self.t, self.t.train_spec, self.t.device
        c, bs = len(jobs), spec.batch_size
        sched = []
        for i, (job, ph) in enumerate(zip(jobs, phases, strict=True)):
            epochs = spec.local_epochs if ph.epochs is None else ph.epochs
            room = None if job.max_steps is None else max(0, job.max_steps - int(used[i]))
            sched.append(self._schedule(job, epochs, ph.purpose, room))
        order = sorted(range(c), key=lambda i: -len(sched[i]))  # stable: ties in job order
        sched = [sched[i] for i in order]
        phases = [phases[i] for i in order]
        lengths = np.array([len(s) for s in sched], dtype=np.int64)
        if len({ph.names for ph in phases}) != 1:
            raise RuntimeError("clients of one cohort declared phases over different tensors")
        names = phases[0].names
        trained = [s.name for s in self.slots if names is None or s.name in names]  # model order
        if previous is None and any(ph.start is None for ph in phases):
            raise RuntimeError("a client's first phase has no start model (Phase.start=None continues a phase)")
        starts = [previous[i] if ph.start is None else ph.start for i, ph in zip(order, phases, strict=True)]
        params = self._unstack(torch.from_numpy(np.stack(starts).astype(np.float32, copy=False)).to(dev))
        coef = torch.tensor([ph.coef if ph.coef > 0 else 0.0 for ph in phases], dtype=torch.float32, device=dev)
        anchors = None
        if any(ph.coef > 0 for ph in phases):
            stacked = np.stack([ph.anchor if ph.coef > 0 else w for ph, w in zip(phases, starts, strict=True)])
            anchors = self._unstack(torch.from_numpy(stacked.astype(np.float32, copy=False)).to(dev))
        bufs = [torch.zeros_like(params[k]) for k in trained] if spec.momentum > 0 else None
        alive = torch.ones(c, dtype=torch.bool, device=dev)
        steps = torch.zeros(c, dtype=torch.int64, device=dev)
        samples = torch.zeros(c, dtype=torch.int64, device=dev)
        loss_sum = torch.zeros(c, dtype=torch.float64, device=dev)
        fill = int(sched[0][0][0]) if c and len(sched[0]) else 0
        for step in range(int(lengths[0]) if c else 0):
            n = int((lengths > step).sum())  # the clients with a batch at this step: a prefix
            idx = np.full((n, bs), fill, dtype=np.int64)
            mask = np.zeros((n, bs), dtype=np.float32)
            for i in range(n):
                b = sched[i][step]
                idx[i, : len(b)] = b
                mask[i, : len(b)] = 1.0
            x, y = t.tensors(idx.reshape(-1))
            x, y = x.view(n, bs, *x.shape[1:]), y.view(n, bs)
            m = torch.from_numpy(mask).to(dev)
            counts = m.sum(1)
            leaves = {k: v[:n].detach().requires_grad_(k in trained) for k, v in params.items()}
            logits = self._forward({k: self._natural(k, v) for k, v in leaves.items()}, x)
            ce = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view(n, bs)
            loss = (ce * m).sum(1) / counts
            if anchors is not None:
                loss = loss + 0.5 * coef[:n] * sum(((leaves[k] - anchors[k][:n]) ** 2).flatten(1).sum(1)
                                                   for k in leaves)
            ok = torch.isfinite(loss.detach())
            stepping = alive[:n] & ok  # a NaN/inf stops the client before its step, as record_loss does
            alive[:n] &= ok
            grads = list(torch.autograd.grad(torch.where(stepping, loss, torch.zeros_like(loss)).sum(),
                                             [leaves[k] for k in trained]))
            with torch.no_grad():
                # every client of the prefix steps (the common case; one sync, free on the CPU): torch's fused SGD
                # on the prefix views, in place; else only the stepping clients move
                every = bool(stepping.all())
                self._sgd([params[k][:n] for k in trained], grads, None if bufs is None else [b[:n] for b in bufs],
                          None if every else stepping)
                loss_sum[:n] += torch.where(stepping, loss.detach().double(), torch.zeros_like(loss_sum[:n]))
                steps[:n] += stepping.long()
                samples[:n] += torch.where(stepping, counts, torch.zeros_like(counts)).long()
        flat = torch.empty(c, self.t.spec.size, dtype=torch.float32, device=dev)
        for s in self.slots:  # one copy per tensor, back into the model's layout (a transposed view's reshape copies)
            flat[:, s.start : s.stop].view(c, *s.shape).copy_(self._natural(s.name, params[s.name]))
        vecs = flat.cpu().numpy()
        back = np.argsort(np.array(order, dtype=np.int64))  # held order -> job order
        vecs = vecs[back]
        steps_h, samples_h = steps.cpu().numpy()[back], samples.cpu().numpy()[back]
        sums_h, alive_h = loss_sum.cpu().numpy()[back], alive.cpu().numpy()[back]
        used += steps_h
        finite &= alive_h
        return vecs, [PhaseStats(int(steps_h[i]), int(samples_h[i]), float(sums_h[i]), int(steps_h[i]))
                      for i in range(c)]

    def _sgd(self, ws: list[torch.Tensor], grads: list[torch.Tensor], bl: list[torch.Tensor] | None,
             stepping: torch.Tensor | None) -> None:
        """torch.optim.SGD's step (dampening 0, no Nesterov) on stacked weights, in place; with `stepping`, only
        on those clients (the others keep weights and momentum buffers bit for bit)."""
        spec = self.t.train_spec
        if stepping is None:  # torch's fused kernel: one pass over weight, gradient and buffer (~1.7x the foreach ops)
            sgd(ws, grads, bl if bl is not None else [None] * len(ws), fused=True, weight_decay=spec.weight_decay,
                momentum=spec.momentum, lr=spec.lr, dampening=0.0, nesterov=False, maximize=False)
            return
        for i, (w, g) in enumerate(zip(ws, grads, strict=True)):
            go = stepping.view(-1, *([1] * (w.dim() - 1)))
            if spec.weight_decay:
                g = g.add(w, alpha=spec.weight_decay)
            if bl is not None:
                buf = bl[i].mul(spec.momentum).add_(g)
                bl[i].copy_(torch.where(go, buf, bl[i]))
                g = buf
            w.copy_(torch.where(go, w.add(g, alpha=-spec.lr), w))

    def _unstack(self, stacked: torch.Tensor) -> dict[str, torch.Tensor]:
        """(C, size) flat vectors -> {name: (C, *shape)} tensors; Linear weights as (C, in, out) (`transposed`)."""
        c = stacked.shape[0]
        return {s.name: self._natural(s.name, stacked[:, s.start : s.stop].reshape(c, *s.shape))
                .clone(memory_format=torch.contiguous_format) for s in self.slots}

    def _natural(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        """A stacked tensor in the model's layout from the held one, or the other way round (a Linear weight's
        transpose is its own inverse)."""
        return tensor.mT if name in self.transposed else tensor
