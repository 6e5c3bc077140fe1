"""Rendering a ranked table as text: Markdown, LaTeX and a self-contained HTML page.

Pure functions of the aggregated table (harness.reports.rank): no MLflow, no files, so each
format can be tested on a synthetic table, and the three formats show the same cells because
they all start from one `display_frame`.

Why the tables look the way they do:
- Every table carries a caption that defines each column's metric and says what mean, std and n
  are: a copied table stays interpretable without this code.
- Columns where every row holds the same value (data set, budget) are dropped and named in the
  caption instead; the best mean per block is bold in every format.
- The HTML page embeds its CSS and plots (base64 PNG) and makes no external request, so it can
  be mailed or archived as one file and renders offline.
"""

from __future__ import annotations

import base64
import html
import math
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from harness.reports.rank import BLOCK, MetricDef, best_mask, metric_defs

SHARED_COLUMNS = {"Data set": "dataset", "Budget": "budget"}


def format_value(d: MetricDef, mean: float, std: float, n: int, reached: int | None = None) -> str:
    if d.unit == "seconds" and reached is not None and reached < n:
        return "not reached" if reached == 0 else f"not reached by {n - reached} of {n} seeds"
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    scale, digits = {"acc": (100.0, 2), "seconds": (1.0, 2), "bytes": (1e-6, 2)}[d.unit]
    text = f"{mean * scale:.{digits}f}"
    if std is not None and not math.isnan(std):
        text += f" ± {std * scale:.{digits}f}"
    return text


def display_frame(table: pd.DataFrame, metric: str, target: float) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Formatted cells, a same-shaped mask of cells to bold, and the columns left out because every
    row holds the same value (data set, budget: the caption names them instead)."""
    defs = metric_defs(target)
    order = [metric, *[m for m in defs if m != metric]]
    shown = pd.DataFrame({
        "Data set": table["dataset"], "Partition": table["partition"], "Budget": table["budget"],
        "Rank": table["rank"].astype(str), "Algorithm": table["label"], "n": table["n"].astype(str),
    })
    shared = {c: str(table[k].iloc[0]) for c, k in SHARED_COLUMNS.items() if table[k].nunique() == 1}
    shown = shown.drop(columns=list(shared))
    bold = pd.DataFrame(False, index=shown.index, columns=shown.columns)
    for m in order:
        d = defs[m]
        header = d.header + (" ▼" if m == metric else "")
        shown[header] = [
            format_value(d, r[f"{d.key}_mean"], r[f"{d.key}_std"], r["n"],
                         r["time_to_acc_reached"] if d.key == "time_to_acc" else None)
            for _, r in table.iterrows()
        ]
        bold[header] = best_mask(table, d).to_numpy()
    return shown, bold, shared


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
            f"Values are mean ± sample standard deviation over seeds (n = number of seeds); the best mean per "
            f"(data set, partition, budget) is in bold. Other columns: {others}.")
    if dropped:
        text += f" {dropped} older duplicate run(s) of the same setting and seed were not counted."
    return text


def to_markdown(shown: pd.DataFrame, bold: pd.DataFrame, cap: str) -> str:
    cells = shown.copy()
    for col in cells.columns:
        cells[col] = [f"**{v}**" if b else v for v, b in zip(cells[col], bold[col], strict=True)]
        cells[col] = cells[col].str.replace("|", "\\|", regex=False)
    table = cells.to_markdown(index=False, disable_numparse=True)
    return f"Table: {cap}\n\n{table}\n"


def _numeric(column: str) -> bool:
    return column not in ("Data set", "Partition", "Budget", "Algorithm")


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_escape(text: str) -> str:
    out = "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))
    return out.replace("±", r"$\pm$").replace("▼", r"$\blacktriangledown$").replace("–", "--")


def to_latex(shown: pd.DataFrame, bold: pd.DataFrame, cap: str, table: pd.DataFrame) -> str:
    cols = list(shown.columns)
    spec = "".join("r" if _numeric(c) else "l" for c in cols)
    lines = [r"% fedharness leaderboard; needs \usepackage{booktabs} and \usepackage{amssymb}",
             r"\begin{table}[t]", r"\centering", r"\small", rf"\caption{{{latex_escape(cap)}}}",
             r"\label{tab:leaderboard}", rf"\begin{{tabular}}{{{spec}}}", r"\toprule",
             " & ".join(rf"\textbf{{{latex_escape(c)}}}" for c in cols) + r" \\", r"\midrule"]
    previous = None
    for i in shown.index:
        block = tuple(table.loc[i, BLOCK])
        if previous is not None and block != previous:
            lines.append(r"\midrule")
        previous = block
        cells = [rf"\textbf{{{latex_escape(v)}}}" if bold.loc[i, c] else latex_escape(v)
                 for c, v in shown.loc[i].items()]
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2rem auto;max-width:1200px;
color:#1b1f23;padding:0 1rem}
h1{font-size:1.5rem}h2{font-size:1.2rem;margin-top:2rem}
table{border-collapse:collapse;font-size:.9rem}
.scroll{overflow-x:auto}
caption{caption-side:top;text-align:left;padding:.5rem 0;color:#444;line-height:1.4;white-space:normal}
th,td{padding:.3rem .6rem;border-bottom:1px solid #ddd;text-align:left;white-space:nowrap}
th{background:#f3f4f6;border-bottom:2px solid #999}
td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.block-start td{border-top:2px solid #999}
td.best{font-weight:bold;background:#eef7ee}
figure{margin:1.5rem 0}figure img{max-width:100%;border:1px solid #ddd}
figcaption{color:#555;font-size:.85rem}
.meta{color:#777;font-size:.8rem;margin-top:2rem}
"""


def to_html(shown: pd.DataFrame, bold: pd.DataFrame, cap: str, table: pd.DataFrame, plots: list[Path],
            title: str, source: str) -> str:
    """One self-contained page: inline CSS, plots embedded as base64 PNG, no external requests."""
    esc = html.escape
    numeric = {c for c in shown.columns if _numeric(c)}
    head = "".join(f"<th>{esc(c)}</th>" for c in shown.columns)
    body, previous = [], None
    for i in shown.index:
        block = tuple(table.loc[i, BLOCK])
        cls = ' class="block-start"' if previous is not None and block != previous else ""
        previous = block
        tds = []
        for c, v in shown.loc[i].items():
            classes = [k for k, on in (("num", c in numeric), ("best", bool(bold.loc[i, c]))) if on]
            attr = f' class="{" ".join(classes)}"' if classes else ""
            inner = f"<b>{esc(v)}</b>" if bold.loc[i, c] else esc(v)
            tds.append(f"<td{attr}>{inner}</td>")
        body.append(f"<tr{cls}>{''.join(tds)}</tr>")
    figures = []
    for p in plots:
        data = base64.b64encode(Path(p).read_bytes()).decode("ascii")
        figures.append(f'<figure><img alt="{esc(p.stem)}" src="data:image/png;base64,{data}">'
                       f"<figcaption>{esc(p.stem)}: personalized accuracy vs round and vs simulated time; "
                       f"line = mean over seeds, band = min–max over seeds.</figcaption></figure>")
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{esc(title)}</title>\n'
            f"<style>{_CSS}</style>\n</head>\n<body>\n<h1>{esc(title)}</h1>\n"
            f'<div class="scroll"><table id="leaderboard">\n<caption>{esc(cap)}</caption>\n'
            f"<thead><tr>{head}</tr></thead>\n<tbody>\n" + "\n".join(body) + "\n</tbody>\n</table></div>\n"
            + (f"<h2>Curves</h2>\n{''.join(figures)}\n" if figures else "")
            + f'<p class="meta">fedharness leaderboard, {esc(stamp)}, from {esc(source)}</p>\n</body>\n</html>\n')
