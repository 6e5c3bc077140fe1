"""Rendering a ranked table as text: Markdown, LaTeX (booktabs) and a self-contained HTML page.

Pure functions of the aggregated table (harness.reports.rank): no MLflow, no files, so each
format can be tested on a synthetic table, and the three formats show the same cells because
they all start from one `display_frame`. LaTeX and the HTML table are typeset by pandas' Styler,
the HTML page around it by a Jinja2 template; nothing is assembled from string fragments.

Why the tables look the way they do:
- Every table carries a caption that defines each column's metric and says what mean, ± and n
  are: a copied table stays interpretable without this code.
- ± is the half-width of the 95% t confidence interval over seeds, not the std: it answers "how
  sure is this mean" and shrinks with more seeds. A column whose seeds all agree (bytes sent, a
  deterministic run) shows no ± at all, rather than "± 0.00".
- The best mean per block is bold and the second best underlined (italic in Markdown, which has no
  underline), as papers mark them; † marks a mean that differs from the baseline algorithm of its
  block at p < 0.05 (paired t-test over the seeds both ran).
- Columns where every row holds the same value (data set, budget) are dropped and named in the
  caption instead.
- The HTML page embeds its CSS and plots (base64 PNG) and makes no external request, so it can
  be mailed or archived as one file and renders offline.
"""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import jinja2
import numpy as np
import pandas as pd
from pandas.io.formats.style import Styler

from harness.reports.rank import MetricDef, best_mask, metric_defs, second_mask

SHARED_COLUMNS = {"Data set": "dataset", "Budget": "budget"}
SIGNIFICANCE = 0.05
DAGGER = "†"
TABLE_ID = "leaderboard"  # the HTML table's id is T_leaderboard (Styler prefixes its uuid)


@dataclass
class Display:
    """The formatted cells of a leaderboard and which of them to mark."""

    shown: pd.DataFrame   # formatted strings, one row per table row
    bold: pd.DataFrame    # same shape: best mean of its block
    second: pd.DataFrame  # same shape: second-best mean of its block
    shared: dict          # columns dropped because every row holds the same value


def format_value(d: MetricDef, mean: float, ci: float | None, n: int, reached: int | None = None,
                 significant: bool = False) -> str:
    """`mean ± ci` in the metric's unit; no ± where the seeds agree (ci 0) or there is one seed (ci NaN)."""
    if d.unit == "seconds" and reached is not None and reached < n:
        return "not reached" if reached == 0 else f"not reached by {n - reached} of {n} seeds"
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    scale, digits = {"acc": (100.0, 2), "seconds": (1.0, 2), "bytes": (1e-6, 2)}[d.unit]
    text = f"{mean * scale:.{digits}f}"
    if ci is not None and not math.isnan(ci) and round(ci * scale, digits) > 0:
        text += f" ± {ci * scale:.{digits}f}"
    return text + (f" {DAGGER}" if significant else "")


def display_frame(table: pd.DataFrame, metric: str, target: float) -> Display:
    defs = metric_defs(target)
    order = [metric, *[m for m in defs if m != metric]]
    shown = pd.DataFrame({
        "Data set": table["dataset"], "Partition": table["partition"], "Budget": table["budget"],
        "Rank": table["rank"].astype(str), "Algorithm": table["label"], "n": table["n"].astype(str),
    })
    shared = {c: str(table[k].iloc[0]) for c, k in SHARED_COLUMNS.items() if table[k].nunique() == 1}
    shown = shown.drop(columns=list(shared))
    bold = pd.DataFrame(False, index=shown.index, columns=shown.columns)
    second = bold.copy()
    for m in order:
        d = defs[m]
        header = d.header + (" ▼" if m == metric else "")
        p_col = f"{d.key}_p"
        shown[header] = [
            format_value(d, r[f"{d.key}_mean"], r.get(f"{d.key}_ci", math.nan), r["n"],
                         r["time_to_acc_reached"] if d.key == "time_to_acc" else None,
                         significant=bool(p_col in r and r[p_col] < SIGNIFICANCE))
            for _, r in table.iterrows()
        ]
        bold[header] = best_mask(table, d).to_numpy()
        second[header] = second_mask(table, d).to_numpy()
    return Display(shown, bold, second, shared)


def caption(experiment: str, table: pd.DataFrame, metric: str, target: float, study: str | None,
            dropped: int, shared: dict | None = None) -> str:
    defs = metric_defs(target)
    d = defs[metric]
    others = "; ".join(defs[m].definition for m in defs if m != metric)
    runs = int(table["n"].sum()) if not table.empty else 0
    scope = f"study {study!r} in experiment {experiment!r}" if study else f"experiment {experiment!r}"
    where = "; ".join(f"{k.lower()} = {v}" for k, v in (shared or {}).items())
    where = f"; all rows: {where}" if where else ""
    text = (f"Leaderboard of {scope} ({runs} finished runs{where}). Ranked by {d.definition} (▼ column). "
            f"Values are means over seeds ± the half-width of their 95% t confidence interval (n = number of "
            f"seeds; no ± where every seed gave the same value or n = 1); per (data set, partition, budget) the "
            f"best mean is bold and the second best underlined.")
    baseline = str(table["baseline"].iloc[0]) if "baseline" in table and len(table) else ""
    if baseline:
        text += (f" {DAGGER} = differs from {baseline} at p < {SIGNIFICANCE:g} (two-sided paired t-test over the "
                 f"seeds both ran; leaderboard.csv holds the p-values, Wilcoxon's and Cohen's d_z).")
    text += f" Other columns: {others}."
    if dropped:
        text += f" {dropped} older duplicate run(s) of the same setting and seed were not counted."
    return text


def to_markdown(view: Display, cap: str) -> str:
    cells = view.shown.copy()
    for col in cells.columns:
        marked = [f"**{v}**" if b else f"_{v}_" if s else v
                  for v, b, s in zip(cells[col], view.bold[col], view.second[col], strict=True)]
        cells[col] = pd.Series(marked, index=cells.index).str.replace("|", "\\|", regex=False)
    table = cells.to_markdown(index=False, disable_numparse=True)
    return f"Table: {cap} (Markdown: second best in italics.)\n\n{table}\n"


def _numeric(column: str) -> bool:
    return column not in ("Data set", "Partition", "Budget", "Algorithm")


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_escape(text: str) -> str:
    out = "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))
    return (out.replace("±", r"$\pm$").replace("▼", r"$\blacktriangledown$").replace("–", "--")
            .replace(DAGGER, r"$^\dagger$"))


def _marks(view: Display, best: str, second: str) -> pd.DataFrame:
    return pd.DataFrame(np.where(view.bold, best, np.where(view.second, second, "")), index=view.shown.index,
                        columns=view.shown.columns)


def to_latex(view: Display, cap: str) -> str:
    """A booktabs table (\\toprule, \\midrule, \\bottomrule) from pandas' Styler; best bold, second underlined."""
    styler = (view.shown.style.hide(axis="index")
              .format(latex_escape)
              .format_index(latex_escape, axis="columns")
              .map_index(lambda _: "textbf:--rwrap;", axis="columns")
              .apply(lambda _: _marks(view, "textbf:--rwrap;", "underline:--rwrap;"), axis=None))
    spec = "".join("r" if _numeric(c) else "l" for c in view.shown.columns)
    body = styler.to_latex(column_format=spec, hrules=True, caption=latex_escape(cap), label="tab:leaderboard",
                           position="t", position_float="centering")
    return r"% fedharness leaderboard; needs \usepackage{booktabs} and \usepackage{amssymb}" + "\n" + body


_PAGE = jinja2.Environment(autoescape=True).from_string("""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{{ title }}</title>
<style>
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2rem auto;max-width:1200px;
color:#1b1f23;padding:0 1rem}
h1{font-size:1.5rem}h2{font-size:1.2rem;margin-top:2rem}
table{border-collapse:collapse;font-size:.9rem}
.scroll{overflow-x:auto}
caption{caption-side:top;text-align:left;padding:.5rem 0;color:#444;line-height:1.4;white-space:normal}
th,td{padding:.3rem .6rem;border-bottom:1px solid #ddd;text-align:left;white-space:nowrap}
th{background:#f3f4f6;border-bottom:2px solid #999}
td.num{text-align:right;font-variant-numeric:tabular-nums}
td.best{font-weight:bold;background:#eef7ee}
td.second{text-decoration:underline}
figure{margin:1.5rem 0}figure img{max-width:100%;border:1px solid #ddd}
figcaption{color:#555;font-size:.85rem}
.meta{color:#777;font-size:.8rem;margin-top:2rem}
</style>
</head>
<body>
<h1>{{ title }}</h1>
<div class="scroll">{{ table | safe }}</div>
{% if figures %}<h2>Figures</h2>
{% for f in figures %}<figure><img alt="{{ f.name }}" src="data:image/png;base64,{{ f.data }}">
<figcaption>{{ f.name }}: {{ f.caption }}</figcaption></figure>
{% endfor %}{% endif %}
<p class="meta">fedharness leaderboard, {{ stamp }}, from {{ source }}</p>
</body>
</html>
""")


def to_html(view: Display, cap: str, plots: list[Path], title: str, source: str,
            captions: dict[str, str] | None = None) -> str:
    """One self-contained page: inline CSS, the table from pandas' Styler, plots embedded as base64 PNG."""
    numeric = pd.DataFrame([[" num" if _numeric(c) else "" for c in view.shown.columns]] * len(view.shown),
                           index=view.shown.index, columns=view.shown.columns)
    classes = _marks(view, "best", "second") + numeric
    table = (Styler(view.shown, uuid=TABLE_ID, cell_ids=False).hide(axis="index").set_caption(cap)
             .set_td_classes(classes.apply(lambda col: col.str.strip())).to_html())
    figures = [{"name": p.stem, "data": base64.b64encode(Path(p).read_bytes()).decode("ascii"),
                "caption": (captions or {}).get(p.stem, "")} for p in plots]
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return _PAGE.render(title=title, table=table, figures=figures, stamp=stamp, source=source)
