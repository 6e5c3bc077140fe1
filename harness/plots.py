"""Plots of one run (accuracy vs round and vs simulated time), in the house style (harness.figure_style).

Built on matplotlib.figure.Figure, not pyplot, so runs that finish together in threads (a study's
parallel cells) need no lock around it.
"""

from __future__ import annotations

from pathlib import Path

from harness.figure_style import integer_rounds, new_figure, save_figure, styled

CURVES = (("personal_acc", "personalized"), ("global_acc", "global"),
          ("personal_acc_worst10", "personalized, worst 10%"))


def plot_run_curves(history: list[dict[str, float]], path: Path, title: str = "") -> Path:
    """accuracy.png (the format follows `path`'s suffix): one line per accuracy the run has."""
    evaluated = [h for h in history if "personal_acc" in h]
    fig = new_figure(10.0, 3.6)
    by_round, by_time = styled(fig, 1, 2)[0]
    for (key, label), style in zip(CURVES, ("-", "--", ":"), strict=True):
        if all(h.get(key, float("nan")) != h.get(key, float("nan")) for h in evaluated):
            continue  # all NaN: e.g. no global model
        ys = [h[key] for h in evaluated]
        by_round.plot([h["round"] for h in evaluated], ys, label=label, marker=".", linestyle=style, color="black")
        by_time.plot([h["sim_time"] for h in evaluated], ys, label=label, marker=".", linestyle=style, color="black")
    by_round.set_xlabel("round")
    integer_rounds(by_round)
    by_time.set_xlabel("simulated time (s)")
    for ax in (by_round, by_time):
        ax.set_ylabel("test accuracy")
    by_round.legend()
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path, formats=(Path(path).suffix or ".png",), dpi=110)[0]
