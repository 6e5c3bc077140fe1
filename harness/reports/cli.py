"""`fedharness leaderboard`: rank the finished runs of an MLflow experiment; export tables + plots.

    fedharness leaderboard --experiment demo [--metric final|best|worst10|tta|bytes] [--target 0.8]

Arguments are checked here, before MLflow is opened, so a typo in --formats or --target is a
one-line error rather than a half-written export folder.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from harness.reports.export import export
from harness.reports.rank import metric_defs

FORMATS = ("md", "csv", "tex", "html")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fedharness leaderboard",
                                description="rank the finished runs of an MLflow experiment; export tables + plots")
    p.add_argument("--experiment", required=True, help="MLflow experiment (a study's name)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default sqlite:///mlruns/mlflow.db)")
    p.add_argument("--study", help="only runs tagged fedharness.study=STUDY")
    p.add_argument("--metric", default="final", choices=list(metric_defs(0.8)),
                   help="rank by: final / best personalized accuracy, worst10 (worst-10%% clients), "
                        "tta (simulated time to --target), bytes (communicated)")
    p.add_argument("--target", type=float, default=0.8, help="accuracy target of tta, in [0, 1] (default 0.8)")
    p.add_argument("--out", help="export folder (default exports/<experiment>, the name made a safe folder name)")
    p.add_argument("--formats", default=",".join(FORMATS), help="comma-separated subset of md,csv,tex,html")
    p.add_argument("--baseline", default="fedavg",
                   help="compare every row with this algorithm of its block, paired over seeds (t-test, Wilcoxon, "
                        "d_z; † marks p < 0.05); 'none' turns it off (default fedavg, where present)")
    p.add_argument("--band", default="ci", choices=["ci", "minmax"],
                   help="figure bands: 95%% t confidence interval of the mean over seeds (default) or min-max")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--no-log", action="store_true", help="do not log the export to MLflow")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not 0 < args.target <= 1:
        raise ValueError(f"--target must be in (0, 1], got {args.target}")
    formats = tuple(f.strip() for f in args.formats.split(",") if f.strip())
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        raise ValueError(f"unknown format(s) {unknown}; choose from md, csv, tex, html")
    from harness.tracking import safe_name

    out = args.out or str(Path("exports") / safe_name(args.experiment))  # a name never leaves exports/
    result = export(args.tracking_uri, args.experiment, out, metric=args.metric, target=args.target,
                    study=args.study, formats=formats, plots=not args.no_plots, log_to_mlflow=not args.no_log,
                    baseline=None if args.baseline.lower() == "none" else args.baseline, band=args.band)
    print(result.markdown)
    for kind, path in result.paths.items():
        print(f"{kind:>8}: {path}", file=sys.stderr)
    for path in result.plots:
        print(f"    plot: {path} (and .pdf, .svg)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
