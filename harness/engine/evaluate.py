"""The evaluation protocol: every client's local test split, personalized and global models.

personal_acc          total correct / total test samples, each client using its own model
personal_acc_mean     unweighted mean of per-client accuracies
personal_acc_worst10  mean accuracy of the worst 10% of clients (at least one client)
global_acc(_mean)     the same for the global model (NaN for algorithms without one: Local, FedPer, ...)
personal_ft_acc(...)  the personalized model after eval_finetune_epochs of fine-tuning (only when on)
personal_val_acc      the personalized model on the clients' validation splits (partition.val_fraction > 0):
                      what selection (the leaderboard's "best" round, tuning) reads instead of test data
*_loss                sample-weighted mean cross-entropy
unseen_* / seen_*     the same restricted to clients that never / do train (when some are unseen)
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from harness.engine.rounds import waves
from partitions.virtual import DENSE_LIMIT, is_virtual
from protocol.messages import ClientEval, ClientJob
from protocol.rng import rng


def per_client_frame(evals: list[ClientEval]) -> pd.DataFrame:
    rows = sorted(evals, key=lambda e: e.cid)
    df = pd.DataFrame({
        "client": [e.cid for e in rows],
        "test_samples": [e.n for e in rows],
        "personal_correct": [e.correct for e in rows],
        "personal_loss_sum": [e.loss for e in rows],
        "global_correct": [e.global_correct for e in rows],
        "global_loss_sum": [e.global_loss for e in rows],
        "personal_ft_correct": [e.ft_correct for e in rows],
        "personal_ft_loss_sum": [e.ft_loss for e in rows],
    })
    n = df["test_samples"].clip(lower=1)
    df["personal_acc"] = df["personal_correct"] / n
    df["global_acc"] = df["global_correct"] / n
    df["personal_ft_acc"] = df["personal_ft_correct"] / n
    if df["personal_ft_correct"].isna().all():  # fine-tune evaluation off: no columns for it
        df = df.drop(columns=["personal_ft_correct", "personal_ft_loss_sum", "personal_ft_acc"])
    if any(e.val_n for e in rows):  # partition.val_fraction > 0: the personalized model on validation data
        df["val_samples"] = [e.val_n for e in rows]
        df["personal_val_correct"] = [e.val_correct for e in rows]
        df["personal_val_loss_sum"] = [e.val_loss for e in rows]
        df["personal_val_acc"] = df["personal_val_correct"] / df["val_samples"].clip(lower=1)
    return df


def summarize(df: pd.DataFrame, prefix: str = "") -> dict[str, float]:
    out = _validation(df, prefix)
    df = df[df["test_samples"] > 0]
    if df.empty:
        return out
    total = float(df["test_samples"].sum())
    k = max(1, int(np.ceil(0.1 * len(df))))
    for who in ("personal", "global", "personal_ft"):
        if f"{who}_acc" not in df:
            continue
        acc = df[f"{who}_acc"].to_numpy(dtype=np.float64)
        # skipna=False: a model that was not evaluated (NaN) must not read as 0 correct
        out[f"{prefix}{who}_acc"] = float(df[f"{who}_correct"].sum(skipna=False)) / total
        out[f"{prefix}{who}_acc_mean"] = float(acc.mean())
        out[f"{prefix}{who}_acc_worst10"] = float(np.sort(acc)[:k].mean())
        out[f"{prefix}{who}_loss"] = float(df[f"{who}_loss_sum"].sum(skipna=False)) / total
    return out


def evaluation_metrics(evals: list[ClientEval], unseen: set[int]) -> tuple[dict[str, float], pd.DataFrame]:
    df = per_client_frame(evals)
    metrics = summarize(df)
    if unseen:
        is_unseen = df["client"].isin(unseen)
        metrics |= summarize(df[is_unseen], "unseen_") | summarize(df[~is_unseen], "seen_")
    return metrics, df


def evaluation_clients(eval_clients: int | None, data, seed: int) -> list[int]:
    """The clients evaluated at each evaluation round: every client (eval_clients unset), or a fixed sample of
    `eval_clients` drawn once from rng(seed, "eval-clients"), sorted. Every client of a virtual population above
    DENSE_LIMIT is refused (a 1,000,000-client evaluation would train-time dwarf the run)."""
    n = data.num_clients
    if eval_clients is None or eval_clients >= n:
        if is_virtual(data) and n > DENSE_LIMIT:
            raise ValueError(f"evaluating all {n:,} clients of a virtual population (partition.virtual_clients) is "
                             f"refused above {DENSE_LIMIT:,}; set eval_clients (a fixed seeded sample evaluated at "
                             f"each evaluation round), e.g. eval_clients=1000")
        return list(range(n))
    return np.sort(rng(seed, "eval-clients").choice(n, eval_clients, replace=False)).tolist()


def evaluate_all(rnd: int, *, data, store, pending: dict, global_vec: np.ndarray, executor,
                 unseen: set[int], clients: list[int] | None = None) -> tuple[dict[str, float], pd.DataFrame]:
    """Every client (seen and unseen), or `clients` (evaluation_clients), on its test split, in waves like
    training; `pending` holds the states this round produced that the store has not committed yet."""
    evals = []
    cids = list(range(data.num_clients)) if clients is None else clients
    for batch_group in waves(cids, executor.num_workers, data.sizes("test")):
        wave = [c for chunk in batch_group for c in chunk]
        states = store.get_many(wave)
        states |= {c: pending[c] for c in wave if c in pending}
        batches = [[ClientJob(c, rnd, {"model": global_vec}, states[c]) for c in chunk] for chunk in batch_group]
        evals.extend(e for part in executor.map("evaluate", batches) for e in part)
    return evaluation_metrics(evals, unseen)


def _validation(df: pd.DataFrame, prefix: str) -> dict[str, float]:
    """personal_val_acc / _loss: pooled over the clients' validation splits; what model selection may read."""
    if "val_samples" not in df:
        return {}
    df = df[df["val_samples"] > 0]
    total = float(df["val_samples"].sum())
    if not total:
        return {}
    return {f"{prefix}personal_val_acc": float(df["personal_val_correct"].sum()) / total,
            f"{prefix}personal_val_loss": float(df["personal_val_loss_sum"].sum()) / total}
