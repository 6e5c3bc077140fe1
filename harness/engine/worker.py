"""A worker hosts many virtual clients: one model, one trainer, the shared data arrays.

The same class runs inside a Ray actor or in-process (tests, debugging). Each call handles a
whole batch of clients, so a round costs one remote call per worker, not one per client.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from algorithms import registry
from algorithms.base import AlgoContext, Algorithm
from harness.config import ConfigError, RunConfig, validate
from harness.engine.batched import CohortTrainer, decide
from harness.engine.training import LocalTrainer
from harness.models import build_model
from partitions.federated import FederatedDataset
from protocol.messages import ClientEval, ClientJob, ClientUpdate
from protocol.params import ParamSpec, model_to_vector
from protocol.rng import torch_generator


def resolve_device(choice: str) -> torch.device:
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device=cuda but no CUDA device is visible to this worker")
    return torch.device(choice)


def check_device(cfg: RunConfig) -> None:
    """What this machine cannot give the run, as one line before anything starts: device=cuda without a CUDA
    device, or workers reserving GPUs a local Ray does not have (it would wait forever to place them).
    Skipped for a cluster (workers.address): its nodes may have what the driver's machine lacks."""
    if cfg.workers.use_ray and cfg.workers.address:
        return
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if cfg.device == "cuda" and not gpus:
        raise ConfigError("device=cuda but this machine has no CUDA device (torch.cuda.is_available() is False); "
                          "use device=auto or device=cpu")
    if cfg.workers.use_ray and cfg.workers.num_gpus > 0 and not gpus:
        raise ConfigError(f"workers.num_gpus={cfg.workers.num_gpus} but this machine has no GPU, so Ray could never "
                          f"place the workers; set workers.num_gpus=0")


def build_algorithm(cfg: RunConfig, data: FederatedDataset) -> tuple[Algorithm, torch.nn.Module, np.ndarray]:
    """The algorithm, its model and the initial flat parameters (same on driver and workers)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch_generator(cfg.seed, "model-init").initial_seed()))
        base = build_model(cfg.model.name, data.input_shape, data.num_classes, **cfg.model.options)
        cls = registry.get(cfg.algorithm.name)
        # build_model may add modules (FedRoD's personal head, Floco's simplex, sized by its hyperparameters);
        # the spec is computed after. The probe has the hyperparameters but no context yet.
        probe = cls.__new__(cls)
        probe.params = cls.Params(**cfg.algorithm.params)
        model = cls.build_model(probe, base)
    spec = ParamSpec.of(model)
    ctx = AlgoContext(spec=spec, train=cfg.train, num_clients=data.num_clients, num_classes=data.num_classes,
                      seed=cfg.seed)
    algo = cls(cls.Params(**cfg.algorithm.params), ctx)
    return algo, model, model_to_vector(model, spec)


class Worker:
    def __init__(self, config: dict, data: FederatedDataset, num_threads: int = 1):
        self.configure(config, data, num_threads)

    def configure(self, config: dict, data: FederatedDataset, num_threads: int = 1) -> str:
        """(Re)build everything a run needs. A study reuses its actors from cell to cell through
        this call instead of paying a process start and `import torch` per cell; nothing of the
        previous run survives (every random draw is seeded per (seed, purpose, round, client))."""
        torch.set_num_threads(max(1, num_threads))
        self.cfg = validate(config)
        self.data = data
        self.algo, model, _ = build_algorithm(self.cfg, data)
        device = resolve_device(self.cfg.device)
        self.trainer = LocalTrainer(model, self.algo.spec, data, self.cfg.train, device, self.cfg.seed)
        batched = decide(self.cfg.train.batched, self.algo, model, self.cfg.train.optimizer, device)
        self.cohorts = CohortTrainer(self.trainer) if batched else None
        return str(self.trainer.device)

    def ping(self) -> str:
        return str(self.trainer.device)

    def node_id(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()

    def train(self, jobs: list[ClientJob]) -> list[ClientUpdate]:
        """Each job's ClientUpdate, in job order: one by one, or cohort by cohort (jobs with a `cohort` id, on a
        worker that trains batched: the driver sent whole cohorts)."""
        if self.cohorts is None or any(job.cohort is None for job in jobs):
            groups = [[job] for job in jobs]
        else:
            by_cohort: dict[int, list[ClientJob]] = {}
            for job in jobs:
                by_cohort.setdefault(job.cohort, []).append(job)
            groups = list(by_cohort.values())
        out = {}
        for group in groups:
            befores = [self._before(job) for job in group]
            if self.cohorts is None or group[0].cohort is None:
                self.trainer.start(group[0])
                updates = [self.algo.local_update(group[0], self.trainer)]
            else:
                updates = self.cohorts.train(self.algo, group)
            for job, update, before in zip(group, updates, befores, strict=True):
                if before is not None:
                    after = self._sampled_correct(job, self.algo.trained_vector(job, update, self.trainer))
                    update.sampled_eval = (before[0], after[0], before[1])
                out[id(job)] = update
        return [out[id(job)] for job in jobs]

    def _before(self, job: ClientJob) -> tuple[int, int] | None:
        """eval_sampled: the received model on the client's test split, with fresh counters and no step budget
        (evaluation never counts against it)."""
        if not self.cfg.eval_sampled:
            return None
        self.trainer.start(dataclasses.replace(job, max_steps=None))
        return self._sampled_correct(job, self.algo.received_vector(job, self.trainer))

    def _sampled_correct(self, job: ClientJob, vec: np.ndarray) -> tuple[int, int]:
        correct, _, n = self.algo.evaluate_personal(job, self.trainer, vec)
        return correct, n

    def evaluate(self, jobs: list[ClientJob]) -> list[ClientEval]:
        """Personalized and global metrics on each client's test split (and the personalized model on its
        validation split, where it has one). The global model is job.payload['model']; evaluation never
        counts against a compute budget."""
        out = []
        for job in jobs:
            self.trainer.start(job)
            personal = self.algo.eval_vector(job, self.trainer)
            correct, loss, n = self.algo.evaluate_personal(job, self.trainer, personal)
            val = self.algo.evaluate_personal(job, self.trainer, personal, "val") \
                if len(self.data.split_of(job.cid, "val")) else (float("nan"), float("nan"), 0)
            if not self.algo.has_global_model:
                g_correct, g_loss = float("nan"), float("nan")
            elif self.algo.personal_is_global():  # FedAvg-like: the personalized model is the global one
                g_correct, g_loss = correct, loss
            else:
                g_correct, g_loss, _ = self.trainer.evaluate(job.payload["model"], job.cid)
            ft_correct, ft_loss = self._finetuned(job, personal) if self.cfg.eval_finetune_epochs else (
                float("nan"), float("nan"))
            out.append(ClientEval(job.cid, n, correct, loss, g_correct, g_loss, ft_correct, ft_loss,
                                  val_n=val[2], val_correct=val[0], val_loss=val[1]))
        return out

    def _finetuned(self, job: ClientJob, personal: np.ndarray) -> tuple[float, float]:
        """FL-bench's fine-tune evaluation: train the personalized model `eval_finetune_epochs` epochs on the
        client's training split (all parameters, the run's optimizer settings), evaluate, keep nothing."""
        self.trainer.start(job)
        self.trainer.set_vector(personal)
        self.trainer.train(job, epochs=self.cfg.eval_finetune_epochs, purpose="eval-finetune")
        correct, loss, _ = self.trainer.evaluate(None, job.cid)
        return float(correct), float(loss)
