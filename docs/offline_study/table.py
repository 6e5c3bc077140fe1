"""The README's table of the reduced offline study, from the leaderboard export's runs.csv.

    fedharness leaderboard --experiment offline-reduced --out docs/offline_study
    .venv/bin/python docs/offline_study/table.py docs/offline_study/runs.csv

One row per algorithm; per data set: final personalized accuracy (mean ± sample std over seeds),
best (mean over seeds of each run's max over evaluated rounds), the rank by final accuracy, and
the wall seconds per run of the newest seed only (its cells ran together under the same load and
code; older seeds may have met a busier machine). Prints Markdown.
"""

from __future__ import annotations

import sys

import pandas as pd

DATASETS = {"cifar10_jpeg_blob": "CIFAR-10", "femnist_300writers": "FEMNIST"}


def wide_table(runs: pd.DataFrame) -> pd.DataFrame:
    runs = runs[runs["dataset"].isin(DATASETS)]
    out = pd.DataFrame(index=sorted(runs["algorithm"].unique()))
    for key, name in DATASETS.items():
        block = runs[runs["dataset"] == key].groupby("algorithm")
        mean, std, n = (100 * block["personal_acc"].mean(), 100 * block["personal_acc"].std(),
                        block["personal_acc"].count())
        text = {a: f"{mean[a]:.2f} ± {std[a]:.2f} (n={n[a]})" for a in mean.index}
        out[f"{name} final % (mean ± std)"] = pd.Series(text)  # aligned on the algorithm index
        out[f"{name} rank"] = mean.rank(ascending=False, method="min").astype(int)
        out[f"{name} best %"] = (100 * block["best_personal_acc"].mean()).map("{:.2f}".format)
        newest = runs[(runs["dataset"] == key) & (runs["seed"] == runs["seed"].max())]
        out[f"{name} wall s/run (seed {runs['seed'].max()})"] = newest.groupby("algorithm")["wall_s"].mean().round()
    return out.rename_axis("algorithm").reset_index()


def main(path: str) -> None:
    table = wide_table(pd.read_csv(path))
    print(table.to_markdown(index=False))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "docs/offline_study/runs.csv")
