"""Critical-difference diagram of the reduced offline study (runs.csv): average ranks of the 12 algorithms,
Friedman test, Nemenyi CD (harness.reports.stats). Blocks = (data set, seed): 2 data sets x 3 seeds = 6;
with two data sets only, seeds stand in for independent problems, which overstates the evidence a little.

    python docs/offline_study/cd_diagram.py      # writes docs/offline_study/plots/cd_diagram.{pdf,png,svg}
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from harness.reports.stats import friedman_nemenyi, plot_cd_diagram  # noqa: E402


def main() -> int:
    runs = pd.read_csv(HERE / "runs.csv")
    table = runs.pivot_table(index=["dataset", "seed"], columns="algorithm", values="personal_acc")
    test = friedman_nemenyi(table.to_numpy(), list(table.columns))
    plot_cd_diagram(test, HERE / "plots" / "cd_diagram",
                    title=f"reduced offline study: {test.blocks} blocks (2 data sets x 3 seeds), final accuracy; "
                          f"Friedman p = {test.friedman_p:.3g}, Nemenyi CD = {test.critical_difference:.2f}")
    order = sorted(zip(test.average_ranks, test.algorithms, strict=True))
    print(f"Friedman chi2 = {test.friedman_statistic:.2f}, p = {test.friedman_p:.3g}; "
          f"CD (alpha 0.05) = {test.critical_difference:.2f}")
    print("| algorithm | average rank |\n|---|---|")
    for rank, name in order:
        print(f"| {name} | {rank:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
