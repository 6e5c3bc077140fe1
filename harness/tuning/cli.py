"""`fedharness tune`: search every algorithm of a tune spec with Ray Tune on one budget, run the chosen and the
default configurations on fresh seeds, and write the side-by-side leaderboard.

    fedharness tune runs/tuning/digits.yaml [overrides...] [--out DIR] [--search-only] [--quiet]

Re-running the same command continues where it stopped: a finished search is read back from MLflow, an
interrupted one resumes from Ray Tune's experiment state (finished trials are kept, the rest rerun), and the
final runs follow the study runner's rules (finished cells are skipped).
"""

from __future__ import annotations

import argparse
import sys

from harness.tuning.spec import load_tune


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fedharness tune", description="tune every algorithm of a spec with the same "
                                "Ray Tune budget (selection on validation data), then compare on fresh seeds")
    p.add_argument("spec", help="tune spec YAML (runs/tuning/*.yaml)")
    p.add_argument("overrides", nargs="*", help="dotted overrides applied to every run, e.g. rounds=5")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default sqlite:///mlruns/mlflow.db)")
    p.add_argument("--out", help="folder for leaderboard.md and leaderboard.csv (default exports/<tune name>)")
    p.add_argument("--search-only", action="store_true", help="search and select; no final runs")
    p.add_argument("--quiet", action="store_true", help="no progress lines or bars")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_intermixed_args(argv)
    from harness import interrupts
    from harness.tuning.report import leaderboard, ranking_sentence, write
    from harness.tuning.runner import run_tune

    interrupts.install()
    t = load_tune(args.spec, args.overrides, tracking_uri=args.tracking_uri)
    per_trial = t.updates_per_trial(next(iter(t.configs)))
    print(f"tune {t.name}: {', '.join(t.configs)}; {t.trials} trials each (at most {per_trial} client-updates a "
          f"trial); Ray Tune state in {t.storage}", flush=True)
    outcome = run_tune(t, progress=not args.quiet, search_only=args.search_only)
    if args.search_only:
        return 0
    if outcome.interrupted or outcome.failed:
        for i, reason in sorted(outcome.failed.items()):
            print(f"  final run {i + 1} failed: {reason}", file=sys.stderr)
        print(f"fedharness: tune {t.name} incomplete; run `fedharness tune {args.spec}` again to finish it",
              file=sys.stderr)
        return 130 if outcome.interrupted else 1
    table = leaderboard(t, outcome)
    files = write(t, table, args.out or f"exports/{t.name}")
    print(ranking_sentence(table))
    print(table[["algorithm", "default_acc", "tuned_acc", "gain_pp", "default_rank", "tuned_rank", "selected"]]
          .to_string(index=False))
    print("wrote " + ", ".join(map(str, files)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
