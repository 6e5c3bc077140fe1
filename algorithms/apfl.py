"""APFL (Deng, Kamani & Mahdavi, 2020, "Adaptive Personalized Federated Learning").

Each client keeps a local model v_i and a mixing weight alpha_i; its personalized model is the
parameter mixture  v_bar = alpha_i v_i + (1 - alpha_i) w_i,  where w_i is its copy of the global
model. Every local step updates, from the same mini-batch,
    w_i   <- w_i   - eta grad f_i(w_i)                       (FedAvg's update; w_i is uploaded)
    v_i   <- v_i   - eta grad_v f_i(v_bar) = eta alpha_i grad f_i(v_bar)
    alpha <- alpha - eta_alpha <v_i - w_i, grad f_i(v_bar)>, clipped to [0, 1]   (adaptive APFL)
all gradients taken at the step's starting point. The server averages the w_i as FedAvg.

Checked against the paper (the local-descent APFL algorithm and its adaptive alpha update): the
mixture is in PARAMETER space and alpha is learned by the exact gradient above. Known
implementations differ, and this module follows the paper:
- the authors' FedTorch code (MLOPTPSU/FedTorch) and FL-bench mix the two models' OUTPUTS
  (alpha f(v) + (1-alpha) f(w)) instead of their parameters;
- FedTorch/FL-bench/PFLlib update alpha with an approximate gradient,
  <v - w, alpha grad f(v) + (1-alpha) grad f(w)> + 0.02 alpha (an undocumented L2 term);
- FedTorch's default is a fixed alpha (fed_adaptive_alpha=False); the paper's method is adaptive.
Defaults: alpha starts at 0.5 (FedTorch's fed_personal_alpha and FL-bench), adaptive on,
eta_alpha = the local learning rate (the paper uses the same eta_t; so do FedTorch/PFLlib).
v_i starts from the global model received in the client's first round (FedTorch/FL-bench start
every v_i from the initial global model; identical in round 0). The v-bar forward/backward is a
second pass over each batch, so one APFL batch counts as two steps and twice its samples on the
virtual clock (APFL costs twice FedAvg's compute). BatchNorm buffers of the mixture are v_i's.
A client that never trained is evaluated with the global model.

`variant: flbench` runs FL-bench's APFL client instead (KarhouTam/FL-bench, src/client/apfl.py, the code
behind the FedOBP authors' logged APFL runs), for comparisons with those logs:
- the personalized prediction mixes OUTPUTS: alpha f(x; v) + (1 - alpha) f(x; w);
- one SGD optimizer holds w and v; per batch, w steps on CE(f(x; w)), then v steps on CE of the output mixture
  (w's output detached) while w's gradient is still in place, so w steps a second time with it;
- alpha moves in the first local epoch only, by <v - w, alpha grad_v + (1 - alpha) grad_w> + 0.02 alpha
  (grad_v: of the mixture loss, grad_w: of w's loss; weights after the steps), step train.lr, clipped;
- batches of one sample are skipped (they still count on the virtual clock).
Fine-tuning evaluation (eval_finetune_epochs) fine-tunes w alone and evaluates it without v, where FL-bench
evaluates the mixture with the fine-tuned w. A client that never trained is evaluated with the global model
(FL-bench: the mixture with v = the initial model, alpha 0.5).
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch.func import functional_call

from algorithms.base import Algorithm, ClientJob, ClientUpdate, Params
from algorithms.registry import register


class APFLParams(Params):
    alpha: float = Field(0.5, ge=0, le=1, description="initial weight of the local model v (FedTorch/FL-bench: 0.5)")
    adaptive_alpha: bool = Field(True, description="learn alpha per client by gradient descent (the paper's APFL)")
    alpha_lr: float | None = Field(None, gt=0, description="step size of alpha; null = train.lr (paper: same eta)")
    variant: Literal["paper", "flbench"] = Field(
        "paper", description="paper: parameter mixture, exact alpha gradient (Deng et al.); flbench: FL-bench's "
                             "client (output mixture, w steps twice a batch, approximate alpha gradient)")


@register
class APFL(Algorithm):
    """APFL: personalized model alpha*v + (1-alpha)*w mixing a local and the global model, alpha learned per client."""

    name = "apfl"
    Params = APFLParams
    source = "Deng et al. 2020 (adaptive alpha, same step size); alpha0=0.5 from MLOPTPSU/FedTorch and FL-bench"

    _after: tuple | None = None  # flbench: (cid, round, trained w, its v and alpha) of the last trained_vector

    def local_update(self, job: ClientJob, trainer) -> ClientUpdate:
        if self.params.variant == "flbench":
            return self._flbench_update(job, trainer)
        model, v, w, v_params, buffers, alpha0 = self._start(job, trainer)
        adaptive = self.params.adaptive_alpha
        alpha = torch.tensor(alpha0, dtype=torch.float32, device=trainer.device, requires_grad=adaptive)
        alpha_lr = self.params.alpha_lr or self.ctx.train.lr
        opt_w = trainer.optimizer(trainer.parameters(None))
        opt_v = trainer.optimizer(v_params)
        model.train()
        personal_loss, batches = 0.0, 0
        # a batch costs two passes (w and v-bar): two steps and twice its samples on the virtual clock
        for x, y in trainer.batches(job, self.ctx.train.local_epochs, cost=2):
            mixed = {name: alpha * v[name] + (1 - alpha) * p.detach() for name, p in w.items()}
            loss_bar = F.cross_entropy(functional_call(model, {**buffers, **mixed}, (x,)), y)
            loss_w = F.cross_entropy(model(x), y)
            if not trainer.record_loss(loss_w) or not math.isfinite(float(loss_bar.detach())):
                trainer.mark_nonfinite()
                break
            opt_w.zero_grad(set_to_none=True)
            opt_v.zero_grad(set_to_none=True)
            alpha.grad = None
            (loss_w + loss_bar).backward()  # separable: w only in loss_w, (v, alpha) only in loss_bar
            opt_w.step()
            opt_v.step()
            if adaptive:
                with torch.no_grad():
                    alpha.sub_(alpha_lr * alpha.grad).clamp_(0.0, 1.0)
            personal_loss += float(loss_bar.detach())
            batches += 1
        return self._result(job, trainer, v, float(alpha.detach()), personal_loss, batches)

    def _start(self, job: ClientJob, trainer) -> tuple:
        """Both variants' start: w = the global model on the trainer's model, v (the stored one, else the global
        model) as tensors, v's parameters set to require gradients, its buffers, and alpha."""
        global_vec = job.payload["model"]
        trainer.set_vector(global_vec)  # w_i starts at the global model
        v = self._tensors(job.state.get("v", global_vec), trainer.device)
        w = dict(trainer.model.named_parameters())
        v_params = [v[name].requires_grad_() for name in w]
        buffers = {name: t for name, t in v.items() if name not in w}
        alpha = float(job.state["alpha"][0]) if "alpha" in job.state else self.params.alpha
        return trainer.model, v, w, v_params, buffers, alpha

    def _result(self, job: ClientJob, trainer, v: dict, alpha: float, personal_loss: float,
                batches: int) -> ClientUpdate:
        """Upload w, keep v and alpha."""
        state = {"v": self._vector(v), "alpha": np.array([alpha], dtype=np.float32)}
        return trainer.update(job, upload={"model": trainer.get_vector()}, state=state, alpha=alpha,
                              personal_loss=personal_loss / batches if batches else float("nan"))

    def _flbench_update(self, job: ClientJob, trainer) -> ClientUpdate:
        """FL-bench's APFL client (see the module docstring)."""
        model, v, w, v_params, buffers, alpha = self._start(job, trainer)
        alpha_lr = self.params.alpha_lr or self.ctx.train.lr
        opt = trainer.optimizer([*trainer.parameters(None), *v_params])  # one optimizer, as FL-bench's
        model.train()
        n, bs = len(trainer.split_of(job.cid)), self.ctx.train.batch_size
        # the batches of the first epoch (alpha moves there only); a BatchNorm model's trainer never yields a
        # one-sample last batch
        per_epoch = -(-n // bs) - int(n % bs == 1 and getattr(trainer, "skips_single_batches", False))
        personal_loss, batches = 0.0, 0
        for k, (x, y) in enumerate(trainer.batches(job, self.ctx.train.local_epochs, cost=2)):
            if len(x) <= 1:
                continue
            loss_w = F.cross_entropy(model(x), y)
            if not trainer.record_loss(loss_w):
                break
            opt.zero_grad(set_to_none=True)
            loss_w.backward()
            opt.step()  # w only: v has no gradient yet
            with torch.no_grad():
                logits_w = model(x)
            mixed = alpha * functional_call(model, {**buffers, **v}, (x,)) + (1 - alpha) * logits_w
            loss_p = F.cross_entropy(mixed, y)
            if not math.isfinite(float(loss_p.detach())):
                trainer.mark_nonfinite()
                break
            loss_p.backward()
            opt.step()  # v once, w a second time with its gradient from loss_w
            if self.params.adaptive_alpha and k < per_epoch:
                with torch.no_grad():
                    grad = sum(float(torch.dot((v[name] - p).flatten(), (alpha * v[name].grad + (1 - alpha) * p.grad)
                                               .flatten())) for name, p in w.items())
                alpha = min(1.0, max(0.0, alpha - alpha_lr * (grad + 0.02 * alpha)))
            personal_loss += float(loss_p.detach())
            batches += 1
        return self._result(job, trainer, v, alpha, personal_loss, batches)

    def trained_vector(self, job: ClientJob, update: ClientUpdate, trainer) -> np.ndarray:
        if self.params.variant == "paper":
            return super().trained_vector(job, update, trainer)
        vec = update.upload["model"]
        self._after = (job.cid, job.round, vec, update.state)  # read by evaluate_personal right after
        return vec

    @torch.no_grad()
    def evaluate_personal(self, job: ClientJob, trainer, vec: np.ndarray,
                          split: str = "test") -> tuple[int, float, int]:
        """flbench: the output mixture alpha f(x; v) + (1 - alpha) f(x; w) with w = `vec` and the client's v and
        alpha (those of its update when `vec` is the model trained_vector just returned)."""
        if self.params.variant == "paper":
            return super().evaluate_personal(job, trainer, vec, split)
        after = self._after
        state = after[3] if after is not None and after[:2] == (job.cid, job.round) and after[2] is vec else job.state
        if "v" not in state:
            return trainer.evaluate(vec, job.cid, split)
        alpha = float(state["alpha"][0])
        trainer.set_vector(vec)
        model = trainer.model
        model.eval()
        v = self._tensors(state["v"], trainer.device)
        correct, loss, count = 0, 0.0, 0
        for x, y in trainer.batches_from(job, trainer.split_of(job.cid, split), cost=0):
            logits = alpha * functional_call(model, v, (x,)) + (1 - alpha) * model(x)
            loss += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(1) == y).sum())
            count += len(y)
        return correct, loss, count

    def eval_vector(self, job: ClientJob, trainer) -> np.ndarray:
        if "v" not in job.state or self.params.variant == "flbench":  # flbench: w; evaluate_personal mixes outputs
            return job.payload["model"]
        alpha = float(job.state["alpha"][0])
        return (alpha * job.state["v"] + (1 - alpha) * job.payload["model"]).astype(np.float32)

    def _tensors(self, vec: np.ndarray, device: torch.device) -> dict[str, torch.Tensor]:
        return {s.name: torch.tensor(vec[s.start : s.stop], dtype=torch.float32, device=device).view(s.shape)
                for s in self.spec.slots}

    def _vector(self, tensors: dict[str, torch.Tensor]) -> np.ndarray:
        out = np.empty(self.spec.size, dtype=np.float32)
        for s in self.spec.slots:
            out[s.start : s.stop] = tensors[s.name].detach().reshape(-1).cpu().numpy()
        return out
