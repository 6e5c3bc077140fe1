"""Statistics for leaderboards, from scipy: confidence intervals over seeds, paired comparisons against a
baseline, and average ranks with a Friedman test and Nemenyi's critical difference across many cells.

Why these: a benchmark that reports `mean ± std` of 3 seeds cannot say whether two algorithms differ.
Over seeds the standard is a t interval for the mean (or a bootstrap one for very small or skewed
samples), a paired test against a baseline on the same seeds (the same partition and data order, so
pairing removes the seed-to-seed spread), and across (data set, partition) cells the Friedman test on
ranks with Nemenyi's critical difference (Demšar, JMLR 2006), drawn as a critical-difference diagram.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float
    n: int

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2


def mean_ci(values, confidence: float = 0.95, method: str = "t", seed: int = 0) -> Interval:
    """Mean and its confidence interval: Student's t (default) or a percentile bootstrap (`method="bootstrap"`,
    scipy.stats.bootstrap, 9,999 resamples). NaNs are dropped; one value gives a zero-width interval."""
    x = np.asarray([v for v in values if v == v], dtype=np.float64)
    if x.size == 0:
        return Interval(float("nan"), float("nan"), float("nan"), 0)
    mean = float(x.mean())
    if x.size == 1 or np.all(x == x[0]):
        return Interval(mean, mean, mean, int(x.size))
    if method == "t":
        low, high = stats.t.interval(confidence, x.size - 1, loc=mean, scale=stats.sem(x))
    elif method == "bootstrap":
        res = stats.bootstrap((x,), np.mean, confidence_level=confidence, n_resamples=9999, method="percentile",
                              random_state=np.random.default_rng(seed))
        low, high = res.confidence_interval
    else:
        raise ValueError(f"unknown interval method {method!r}; choose t or bootstrap")
    return Interval(mean, float(low), float(high), int(x.size))


@dataclass(frozen=True)
class Paired:
    """`values - baseline` over paired seeds: mean difference, paired t and Wilcoxon p-values, Cohen's d_z."""

    n: int
    mean_diff: float
    t_p: float
    wilcoxon_p: float
    effect: float  # d_z = mean(diff) / sd(diff)


def paired_comparison(values, baseline) -> Paired:
    a = np.asarray(values, dtype=np.float64)
    b = np.asarray(baseline, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired comparison needs the same seeds on both sides, got {a.size} and {b.size} values")
    keep = ~(np.isnan(a) | np.isnan(b))
    d = a[keep] - b[keep]
    n = int(d.size)
    if n == 0:
        return Paired(0, float("nan"), float("nan"), float("nan"), float("nan"))
    mean = float(d.mean())
    if n < 2 or np.all(d == d[0]):
        same = bool(np.all(d == 0))
        return Paired(n, mean, 1.0 if same else float("nan"), 1.0 if same else float("nan"),
                      0.0 if same else float("nan"))
    t_p = float(stats.ttest_rel(a[keep], b[keep]).pvalue)
    w_p = float(stats.wilcoxon(a[keep], b[keep]).pvalue) if np.any(d != 0) else 1.0
    sd = float(d.std(ddof=1))
    return Paired(n, mean, t_p, w_p, mean / sd if sd > 0 else float("nan"))


@dataclass(frozen=True)
class RankTest:
    algorithms: list[str]
    average_ranks: list[float]  # 1 = best
    friedman_statistic: float
    friedman_p: float
    critical_difference: float  # Nemenyi, at `alpha`
    alpha: float
    blocks: int


def friedman_nemenyi(scores: np.ndarray, algorithms: list[str], alpha: float = 0.05,
                     higher_is_better: bool = True) -> RankTest:
    """`scores[b, a]`: algorithm a's score in block (data set x partition cell) b. Ranks within each block
    (ties get the mean rank), their averages, scipy's Friedman chi-square test, and Nemenyi's critical
    difference CD = q_alpha * sqrt(k (k + 1) / (6 N)) with q_alpha = studentized_range(k, inf) / sqrt(2)."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[1] != len(algorithms):
        raise ValueError(f"scores must be blocks x {len(algorithms)} algorithms, got shape {scores.shape}")
    blocks, k = scores.shape
    if blocks < 2 or k < 3:
        raise ValueError(f"the Friedman test needs at least 2 blocks and 3 algorithms, got {blocks} and {k}")
    ranks = np.vstack([stats.rankdata(-row if higher_is_better else row) for row in scores])
    statistic, p = stats.friedmanchisquare(*scores.T)
    q = stats.studentized_range.ppf(1 - alpha, k, np.inf) / math.sqrt(2)
    cd = float(q * math.sqrt(k * (k + 1) / (6.0 * blocks)))
    return RankTest(list(algorithms), ranks.mean(axis=0).tolist(), float(statistic), float(p), cd, alpha, blocks)


def cd_groups(test: RankTest) -> list[tuple[int, int]]:
    """Maximal runs of algorithms (in rank order) whose average ranks differ by less than the CD: the bars of
    a critical-difference diagram, as index ranges into the sorted order."""
    order = np.argsort(test.average_ranks)
    r = np.asarray(test.average_ranks)[order]
    groups = []
    for i in range(len(r)):
        j = i
        while j + 1 < len(r) and r[j + 1] - r[i] < test.critical_difference:
            j += 1
        if j > i and not any(a <= i and j <= b for a, b in groups):
            groups.append((i, j))
    return groups


def plot_cd_diagram(test: RankTest, path, title: str = "") -> list:
    """The critical-difference diagram (Demšar 2006): average ranks on an axis, a bar joining algorithms
    whose ranks are not significantly different (Nemenyi). Writes `path` as PDF and PNG (and SVG); greyscale."""
    from harness.figure_style import new_figure, save_figure

    order = np.argsort(test.average_ranks)
    names = [test.algorithms[i] for i in order]
    ranks = [test.average_ranks[i] for i in order]
    k = len(names)
    fig = new_figure(7.0, 1.2 + 0.28 * k)
    ax = fig.add_subplot()
    ax.grid(False)
    ax.set_xlim(1 - 0.3, k + 0.3)
    ax.set_ylim(0, 1)
    ax.invert_xaxis()
    ax.spines[["left", "right", "bottom"]].set_visible(False)
    ax.xaxis.set_ticks_position("top")
    ax.set_xticks(range(1, k + 1))
    ax.set_yticks([])
    ax.set_xlabel("average rank (1 = best)")
    ax.xaxis.set_label_position("top")
    half = (k + 1) // 2
    for i, (name, rank) in enumerate(zip(names, ranks, strict=True)):
        left = i < half
        y = 0.85 - 0.8 * (i if left else k - 1 - i) / max(half, 1)
        x_text = 1 - 0.25 if left else k + 0.25
        ax.plot([rank, rank, x_text], [1.0, y, y], color="black", lw=0.8)
        ax.text(x_text, y, f" {name} ({rank:.2f}) ", ha="left" if left else "right", va="center", fontsize=8)
    for n, (a, b) in enumerate(cd_groups(test)):
        y = 0.95 - 0.06 * (n + 1)
        ax.plot([ranks[a] - 0.03, ranks[b] + 0.03], [y, y], color="black", lw=2.5)
    ax.plot([1, 1 + test.critical_difference], [0.02, 0.02], color="black", lw=1.2)
    ax.text(1 + test.critical_difference / 2, 0.05, f"CD = {test.critical_difference:.2f}", ha="center", fontsize=8)
    ax.set_title(title or f"Friedman p = {test.friedman_p:.3g}, {test.blocks} cells, Nemenyi alpha = {test.alpha}",
                 fontsize=9, pad=28)
    fig.tight_layout()
    return save_figure(fig, path, formats=(".pdf", ".png", ".svg"))
