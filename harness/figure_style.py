"""One figure style for every plot fedharness draws (run curves, study curves, fairness, CD diagram).

Why these choices:
- Each algorithm gets a colour from the Okabe-Ito palette (readable with the common colour-vision
  deficiencies) *and* its own line style and marker, so curves stay apart when a paper is printed
  in greyscale. The assignment follows the sorted algorithm labels, so an algorithm keeps its look
  across all figures of one export.
- Rounds are integers: round axes get integer ticks only.
- Every figure is written as PDF and SVG (vector, for a paper) beside the PNG (for the HTML page
  and MLflow), by one `save_figure`.
- Figures are matplotlib.figure.Figure objects, never pyplot: pyplot keeps a global registry of
  figures per process, which is not thread-safe (a study's cells finish in threads) and not needed
  to write a file.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib as mpl
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

#: Okabe & Ito (2008), "Color Universal Design": black first, then the seven colours
PALETTE = ["#000000", "#E69F00", "#56B4E9", "#009E73", "#0072B2", "#D55E00", "#CC79A7", "#F0E442"]
LINESTYLES = ["-", "--", "-.", ":", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1)), (0, (1, 1)), (0, (8, 2, 2, 2))]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*", "h", "<"]

RC = {
    "font.size": 9, "axes.titlesize": 9, "axes.labelsize": 9, "legend.fontsize": 8, "xtick.labelsize": 8,
    "ytick.labelsize": 8, "axes.grid": True, "grid.alpha": 0.3, "grid.linewidth": 0.6, "axes.spines.top": False,
    "axes.spines.right": False, "lines.linewidth": 1.4, "lines.markersize": 3.5, "legend.frameon": False,
    "pdf.fonttype": 42, "ps.fonttype": 42, "svg.fonttype": "none",  # editable text in vector files
}
FORMATS = (".png", ".pdf", ".svg")


def algorithm_styles(labels) -> dict[str, dict]:
    """label -> plot keywords (color, linestyle, marker): distinct in colour and in greyscale."""
    out = {}
    for i, label in enumerate(sorted(set(labels))):
        out[label] = {"color": PALETTE[i % len(PALETTE)], "linestyle": LINESTYLES[i % len(LINESTYLES)],
                      "marker": MARKERS[i % len(MARKERS)]}
    return out


def new_figure(width: float, height: float) -> Figure:
    with mpl.rc_context(RC):
        return Figure(figsize=(width, height))


def styled(fig: Figure, nrows: int = 1, ncols: int = 1):
    """Subplots created under the house style (rcParams are read when axes and artists are made)."""
    with mpl.rc_context(RC):
        return fig.subplots(nrows, ncols, squeeze=False)


def integer_rounds(ax) -> None:
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def save_figure(fig: Figure, base: Path, formats: tuple[str, ...] = FORMATS, dpi: int = 150) -> list[Path]:
    """Write `base` with each suffix (PNG first); returns the paths written."""
    base = Path(base).with_suffix("")
    base.parent.mkdir(parents=True, exist_ok=True)
    out = []
    with mpl.rc_context(RC):
        for suffix in formats:
            path = base.with_suffix(suffix)
            fig.savefig(path, dpi=dpi, bbox_inches="tight", metadata=_metadata(suffix))
            out.append(path)
    return out


def _metadata(suffix: str) -> dict | None:
    # no creation date in vector files: the same figure gives the same bytes (diff-able in a repository)
    return {"CreationDate": None} if suffix == ".pdf" else {"Date": None} if suffix == ".svg" else None
