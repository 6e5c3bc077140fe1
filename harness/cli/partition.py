"""`fedharness partition SPEC [overrides]`: build a run spec's partition, print its summary,
write the heatmap and tables. The same files are what the engine logs to MLflow with a run."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fedharness partition",
                                description="summarize the partition of a run spec and draw its labels-per-client "
                                            "heatmap (uses the spec's data, partition and seed)")
    p.add_argument("spec", help="run spec YAML")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. partition.alpha=0.1 seed=1")
    p.add_argument("--out", default="partition_report", help="folder for the PNG and CSV/JSON files "
                                                             "(default ./partition_report)")
    p.add_argument("--max-clients", type=int, default=200, help="clients drawn in the heatmap (default 200)")
    p.add_argument("--no-cache", action="store_true", help="ignore and do not write the partition cache")
    p.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                   help="a module registering data sources / partition schemes (repeatable)")
    return p


def main(argv: list[str] | None = None) -> int:
    from harness.config import ConfigError, load_config

    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        cfg = load_config(args.spec, [*args.overrides, *(["partition.cache_dir=null"] if args.no_cache else [])],
                          plugins=args.plugin)
        from partitions import build_federated_dataset, scheme_label
        from partitions.stats import format_summary, partition_summary, save_partition_artifacts

        t0 = time.perf_counter()
        fed = build_federated_dataset(cfg.data, cfg.partition, cfg.seed)
        seconds = time.perf_counter() - t0
        paths = save_partition_artifacts(fed, Path(args.out), max_clients=args.max_clients)
    except ConfigError as err:
        print(f"fedharness partition: config error: {err}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as err:
        print(f"fedharness partition: error: {err}", file=sys.stderr)
        return 2
    p = cfg.partition
    shift = "" if p.feature_shift.kind == "none" else f", feature shift {p.feature_shift.kind}"
    clients = (f"{p.virtual_clients:,} virtual clients over {p.num_clients}" if p.virtual_clients is not None
               else f"{p.num_clients} clients")
    print(f"{fed.name}: {scheme_label(p)}{shift}, {clients}, "
          f"seed {cfg.seed}; built in {seconds:.2f}s (cache {fed.meta.get('cache')})")
    print(format_summary(partition_summary(fed)))
    for path in paths:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
