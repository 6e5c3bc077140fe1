"""IFCA (Ghosh, Chung, Yin & Ramchandran, NeurIPS 2020, "An Efficient Framework for Clustered Federated Learning",
arXiv:2006.04088): the Iterative Federated Clustering Algorithm.

The server keeps k cluster models theta_1..theta_k and sends all of them to every sampled client. The client
estimates its cluster identity j = argmin_j F_i(theta_j), the empirical loss of each model on its own training
data (ties: the lower index), trains theta_j locally (IFCA's model-averaging option: the run's local SGD) and
uploads it with j; the server replaces each theta_j by the mean of the uploads of the clients that chose j (a
cluster nobody chose keeps its model). A client's personalized model is the cluster model with the lowest loss on
its training data, estimated afresh with the current models at every evaluation.

How the k models travel: they ARE the model. `build_model` wraps k copies of the base model as `clusters.0..k-1`
plus a float buffer `select` (one-hot, not communicated) that picks the copy the forward pass runs, so the global
vector holds all k cluster models (checkpointed with it) and evaluation on the workers, which only sees the global
vector and the client's state, can choose among them. Bytes down = k models, bytes up = one model.
Initialisation: cluster 0 is the run's initial model, clusters 1..k-1 are independent draws of the same layers'
init (each module's reset_parameters, from the RNG the engine seeded to build the model, so identical on the driver
and every worker; resnet18's torchvision constructor re-initialises its convolutions and BatchNorms, so there
clusters 1..k-1 get PyTorch's default layer init instead), as in the authors' code (jichan3751/ifca: k independently
initialised models; mnist/ builds them one after another from one seed, femnist/ with seeds seed + j); the paper's
analysis assumes a good initialisation and its experiments use random initialisations (with restarts).

Checked against the paper (Algorithm 1, model averaging, partial participation) and the authors' code
(mnist/train_cluster_mnist.py: argmin of the training loss per machine, plain mean per cluster; cifar/config.json
k = 2, mnist/config.json k = 4, femnist/ifca/run_ifca.sh num_groups 3). Default k = 3: the authors' FEMNIST run,
their only experiment on data without constructed clusters (rotated MNIST: 4 and rotated CIFAR-10: 2 rotations).
Differences, the module follows the paper:
- the mean per cluster is uniform (Algorithm 1 and the authors' code); `weighting=samples` weights by samples;
- the authors assign TEST machines by their loss on the test data; here a client's evaluation uses the cluster with
  the lowest loss on its training data (the test split is never used to choose);
- the paper's weight-sharing variant (lower layers shared by all clusters) is not implemented, nor the authors'
  FEMNIST start from a FedAvg-pretrained body: the k models share nothing;
- the cluster estimation (k forward passes over the training split) is not counted on the virtual clock.
k sizes the model: build_model reads it from the hyperparameters the engine gives its probe (harness.engine.worker.
build_algorithm; the default k without them), and a model built with another k is refused with a clear error.
has_global_model is False: IFCA has k models, not one.
State per client: "cluster" (int64, the identity chosen at its last participation); the round's share of clients
in each cluster is the client metric `cluster_<j>` (logged as client_cluster_<j>_mean), `cluster_changed` says
whether a returning client moved.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field
from torch import nn

from algorithms.base import Algorithm, ClientJob, ClientUpdate, Notes, Params
from algorithms.clusters import ClusterCopies, CopiesLayout
from algorithms.registry import register

AUTHORS = "jichan3751/ifca femnist/ifca/run_ifca.sh"


class IFCAParams(Params):
    k: int = Field(3, ge=1, description="number of cluster models (authors' FEMNIST run: 3; rotated MNIST 4, "
                                        "rotated CIFAR-10 2)")
    weighting: Literal["uniform", "samples"] = Field(
        "uniform", description="mean of a cluster's uploads: uniform (paper's Algorithm 1, authors' code) or by "
                               "samples")


def assign(losses: np.ndarray) -> int:
    """The cluster of lowest loss (ties: the lower index)."""
    return int(np.argmin(losses))


@register
class IFCA(CopiesLayout, Algorithm):
    """IFCA: k cluster models; each client trains the one with the lowest loss on its data, averaged per cluster."""

    name = "ifca"
    Params = IFCAParams
    has_global_model = False
    source = ("Ghosh et al. 2020 (Algorithm 1, model averaging, uniform mean per cluster); k 3 from the authors' "
              "FEMNIST run (" + AUTHORS + "); independent inits as the authors' code")

    def build_model(self, model: nn.Module) -> nn.Module:
        params = getattr(self, "params", None)  # a bare probe (built without hyperparameters) has none
        k = params.k if params is not None else IFCAParams.model_fields["k"].default
        return ClusterCopies(model, k, fresh_init=True)

    def __init__(self, params: IFCAParams, ctx):
        self.lay_out_copies(ctx.spec, params.k, "ifca: k")
        super().__init__(params, ctx)

    # ----- server side ----------------------------------------------------------------------------------------------
    def aggregate(self, global_vec: np.ndarray, updates: list[ClientUpdate], notes: Notes | None = None) -> np.ndarray:
        """Each cluster model = the mean of the uploads of the clients that chose it (float64, client-id order)."""
        new = global_vec.copy()
        for j, (start, stop) in enumerate(self.ranges):
            members = [u for u in sorted(updates, key=lambda u: u.cid) if int(u.upload["cluster"][0]) == j]
            if not members:
                continue
            total = np.zeros(stop - start, dtype=np.float64)
            weight = 0.0
            for u in members:
                w = float(u.num_samples) if self.params.weighting == "samples" else 1.0
                total += w * u.upload["model"].astype(np.float64)
                weight += w
            new[start:stop] = (total / weight).astype(np.float32)
        return new

    def bytes_up(self, update: ClientUpdate) -> int:
        return 4 * self.size if "model" in update.upload else 0

    # ----- client side ----------------------------------------------------------------------------------------------
    def cluster_losses(self, vec: np.ndarray, cid: int, trainer) -> np.ndarray:
        """F_i(theta_j) for every j: mean cross-entropy of each cluster model on the client's training split."""
        out = np.full(self.params.k, np.inf)
        for j in range(self.params.k):
            _, loss_sum, n = trainer.evaluate(self.selected(vec, j), cid, split="train")
            out[j] = loss_sum / n if n else 0.0
        return out

    def local_update(self, job: ClientJob, trainer) -> ClientUpdate:
        received = job.payload["model"]
        j = assign(self.cluster_losses(received, job.cid, trainer))
        trainer.set_vector(self.selected(received, j))
        trainer.train(job, names=[s.name for s in self.spec.slots if s.name.startswith(f"clusters.{j}.")])
        start, stop = self.ranges[j]
        metrics = {f"cluster_{c}": float(c == j) for c in range(self.params.k)}
        if "cluster" in job.state:
            metrics["cluster_changed"] = float(int(job.state["cluster"][0]) != j)
        chosen = np.array([j], dtype=np.int64)
        return trainer.update(job, upload={"model": trainer.get_vector()[start:stop], "cluster": chosen},
                              state={"cluster": chosen}, **metrics)

    def eval_vector(self, job: ClientJob, trainer) -> np.ndarray:
        vec = job.payload["model"]
        return self.selected(vec, assign(self.cluster_losses(vec, job.cid, trainer)))

    def trained_vector(self, job: ClientJob, update: ClientUpdate, trainer) -> np.ndarray:
        j = int(update.upload["cluster"][0])
        start, stop = self.ranges[j]
        out = self.selected(job.payload["model"], j)
        out[start:stop] = update.upload["model"]
        return out
