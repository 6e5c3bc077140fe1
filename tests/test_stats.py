"""The leaderboard statistics against scipy on hand data (harness/reports/stats.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from harness.reports.stats import cd_groups, friedman_nemenyi, mean_ci, paired_comparison, plot_cd_diagram


def test_t_interval_matches_the_textbook_formula():
    x = [80.1, 82.4, 79.3]
    ci = mean_ci(x)
    m, s = np.mean(x), np.std(x, ddof=1)
    half = stats.t.ppf(0.975, 2) * s / math.sqrt(3)  # 4.303 * s / sqrt(3)
    assert ci.mean == pytest.approx(m) and ci.n == 3
    assert (ci.low, ci.high) == (pytest.approx(m - half), pytest.approx(m + half))
    assert mean_ci([5.0]).half_width == 0 and mean_ci([2.0, 2.0]).half_width == 0  # deterministic columns
    assert mean_ci([float("nan"), 1.0, 3.0]).n == 2


def test_bootstrap_interval_brackets_the_mean_and_is_reproducible():
    x = [1.0, 2.0, 4.0, 8.0, 3.0]
    a, b = mean_ci(x, method="bootstrap"), mean_ci(x, method="bootstrap")
    assert a == b and a.low < np.mean(x) < a.high
    with pytest.raises(ValueError, match="unknown interval method"):
        mean_ci(x, method="magic")


def test_paired_comparison_matches_scipy_and_cohens_dz():
    ours, base = [83.2, 79.5, 77.2, 81.0], [83.2, 79.4, 77.4, 80.1]
    p = paired_comparison(ours, base)
    d = np.subtract(ours, base)
    assert p.n == 4 and p.mean_diff == pytest.approx(d.mean())
    assert p.t_p == pytest.approx(stats.ttest_rel(ours, base).pvalue)
    assert p.wilcoxon_p == pytest.approx(stats.wilcoxon(ours, base).pvalue)
    assert p.effect == pytest.approx(d.mean() / d.std(ddof=1))
    same = paired_comparison([1.0, 2.0], [1.0, 2.0])
    assert (same.mean_diff, same.t_p, same.effect) == (0.0, 1.0, 0.0)
    with pytest.raises(ValueError, match="same seeds"):
        paired_comparison([1.0], [1.0, 2.0])


def test_friedman_and_nemenyi_match_scipy_and_demsar():
    # 4 cells x 3 algorithms; algorithm A always best, C always worst
    scores = np.array([[0.9, 0.8, 0.7], [0.85, 0.80, 0.60], [0.7, 0.75, 0.5], [0.95, 0.9, 0.8]])
    t = friedman_nemenyi(scores, ["A", "B", "C"])
    assert t.average_ranks == pytest.approx([1.25, 1.75, 3.0])
    chi2, p = stats.friedmanchisquare(*scores.T)
    assert (t.friedman_statistic, t.friedman_p) == (pytest.approx(chi2), pytest.approx(p))
    # Demšar (2006), Table 5: q_0.05 for k=3 is 2.343; CD = 2.343 * sqrt(3*4 / (6*4))
    assert t.critical_difference == pytest.approx(2.343 * math.sqrt(12 / 24), abs=2e-3)
    # A-B (0.5) and B-C (1.25) are within the CD of 1.657, A-C (1.75) is not: two bars, none joining A and C
    assert cd_groups(t) == [(0, 1), (1, 2)]
    with pytest.raises(ValueError, match="at least 2 blocks and 3 algorithms"):
        friedman_nemenyi(scores[:1], ["A", "B", "C"])


def test_cd_diagram_is_written_as_pdf_png_and_svg(tmp_path):
    scores = np.random.default_rng(0).random((6, 5))
    paths = plot_cd_diagram(friedman_nemenyi(scores, list("ABCDE")), tmp_path / "cd")
    assert sorted(p.suffix for p in paths) == [".pdf", ".png", ".svg"]
    assert all(p.stat().st_size > 1000 for p in paths)
    assert (tmp_path / "cd.pdf").read_bytes()[:4] == b"%PDF"
