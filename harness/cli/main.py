"""The `fedharness` command line."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from harness.config import ConfigError, RunConfig, load_config

RESULT_COLUMNS = ["personal_acc", "best_personal_acc", "personal_acc_mean", "personal_acc_worst10", "global_acc",
                  "sim_time", "bytes_up_total"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fedharness", description="Ray-parallel benchmark harness for personalized FL")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run one spec (or one spec per algorithm with --compare)")
    run.add_argument("spec")
    run.add_argument("overrides", nargs="*", help="dotted overrides, e.g. algorithm.name=fedper rounds=50")
    run.add_argument("--compare", help="comma-separated algorithms to run on the same spec, then a table")
    _common(run)

    res = sub.add_parser("resume", help="continue a run from its last checkpoint, in the same MLflow run")
    res.add_argument("run_id")
    res.add_argument("--checkpoint-dir", default=".fedharness/checkpoints")
    res.add_argument("--quiet", action="store_true")

    alg = sub.add_parser("algorithms", help="list algorithms with their hyperparameters and defaults")
    alg.add_argument("--markdown", action="store_true")
    _plugin_option(alg)

    val = sub.add_parser("validate", help="check a spec and print the resolved config")
    val.add_argument("spec")
    val.add_argument("overrides", nargs="*")
    _plugin_option(val)

    for name, helptext in (("partition", "summarize a partition and draw its heatmap"),
                           ("study", "run a grid of specs (one MLflow run per cell)"),
                           ("tune", "tune every algorithm with one Ray Tune budget, then compare on fresh seeds"),
                           ("leaderboard", "rank runs of an experiment and export tables/plots"),
                           ("ui", "start the MLflow UI on 127.0.0.1")):
        sub.add_parser(name, help=helptext, add_help=False)
    return p


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default sqlite:///mlruns/mlflow.db)")
    p.add_argument("--quiet", action="store_true", help="no progress bars (CI)")
    p.add_argument("--keep-checkpoint", action="store_true",
                   help="keep the checkpoint folder of a run that finishes (= keep_checkpoint=true)")
    _plugin_option(p)


def _plugin_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                   help="a module (dotted path or .py file) registering algorithms/models/data sources/schemes; "
                        "added to the spec's `plugins` (repeatable)")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for chatty in ("mlflow.store.db.utils", "alembic"):  # "Creating initial MLflow database tables..." on stderr
        logging.getLogger(chatty).setLevel(logging.WARNING)
    show_traceback = "--traceback" in argv  # for bug reports: errors are one line otherwise
    argv = [a for a in argv if a != "--traceback"]
    if argv and argv[0] in ("partition", "study", "tune", "leaderboard", "ui"):
        return _delegate(argv[0], argv[1:], show_traceback)
    parser = _parser()
    args, extra = parser.parse_known_args(argv)  # overrides may also come after options
    stray = [e for e in extra if "=" not in e or not hasattr(args, "overrides")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    from harness import interrupts

    interrupts.install()
    command = {"run": cmd_run, "resume": cmd_resume, "algorithms": cmd_algorithms, "validate": cmd_validate}
    return _one_line_errors(lambda: command[args.command](args), show_traceback)


def _delegate(command: str, argv: list[str], show_traceback: bool = False) -> int:
    import importlib

    module = {"partition": "harness.cli.partition", "study": "harness.studies.cli", "tune": "harness.tuning.cli",
              "leaderboard": "harness.reports.cli", "ui": "harness.cli.ui"}[command]
    return _one_line_errors(lambda: importlib.import_module(module).main(argv), show_traceback)


def _one_line_errors(command, show_traceback: bool = False) -> int:
    """Run a command; every error becomes one line on stderr. Bad input (config, data, checkpoint) and a run
    that failed on its own terms (RunFailed: the MLflow run is FAILED with the reason) exit 2; anything
    unforeseen exits 1 and says how to see its traceback."""
    import yaml

    from harness.engine.rounds import RunFailed

    try:
        return command()
    except ConfigError as err:
        return _error(f"config error: {_line(err)}", 2)
    except RunFailed as err:
        where = f" (MLflow run {err.run_id}: FAILED; its checkpoint is kept)" if err.run_id else ""
        return _error(f"run failed: {_line(err)}{where}", 2)
    except (FileNotFoundError, ValueError, yaml.YAMLError) as err:
        return _error(f"error: {_line(err)}", 2)
    except KeyboardInterrupt:
        return _error("interrupted; completed rounds are checkpointed (see `fedharness resume`)", 130)
    except BrokenPipeError:  # e.g. `fedharness algorithms | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as err:  # noqa: BLE001 - one line, not a traceback, unless asked for
        if show_traceback:
            raise
        return _error(f"unexpected error: {type(err).__name__}: {_line(err)} (rerun with --traceback for details)", 1)


def _line(err: BaseException) -> str:
    """The first line of an error's message (pydantic's: its first error, located)."""
    from pydantic import ValidationError

    if isinstance(err, ValidationError) and err.errors():
        e = err.errors()[0]
        return f"{'.'.join(str(p) for p in e['loc']) or 'value'}: {e['msg']}"
    if isinstance(err, KeyError) and err.args:
        return str(err.args[0])
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def _error(text: str, code: int) -> int:
    print(f"fedharness: {text}", file=sys.stderr)
    return code


def _with_tracking(cfg: RunConfig, uri: str | None) -> RunConfig:
    if uri:
        cfg.tracking.uri = uri
    return cfg


def cmd_run(args) -> int:
    from harness.engine import run
    from harness.reports.table import print_table

    if args.keep_checkpoint:
        args.overrides = [*args.overrides, "keep_checkpoint=true"]
    cfg = _with_tracking(load_config(args.spec, args.overrides, plugins=args.plugin), args.tracking_uri)
    algorithms = args.compare.split(",") if args.compare else [cfg.algorithm.name]
    configs = [load_config(args.spec, [*args.overrides, f"algorithm.name={a}"], plugins=args.plugin)
               if args.compare else cfg for a in algorithms]
    rows = []
    for c in configs:
        _with_tracking(c, args.tracking_uri)
        result = run(c, progress=not args.quiet)
        _warn_empty_rounds(result)
        rows.append({"algorithm": c.algorithm.name, "run_id": result.run_id,
                     **{k: result.final.get(k) for k in RESULT_COLUMNS}})
    print_table(rows, title=f"{cfg.name}: {cfg.data.source}, {cfg.partition.scheme}, {cfg.rounds} rounds, "
                            f"seed {cfg.seed} (final = last evaluated round)")
    return 0


def cmd_resume(args) -> int:
    from harness.engine import resume
    from harness.reports.table import print_table

    result = resume(args.run_id, args.checkpoint_dir, progress=not args.quiet)
    _warn_empty_rounds(result)
    print_table([{"algorithm": result.config.algorithm.name, "run_id": result.run_id,
                  **{k: result.final.get(k) for k in RESULT_COLUMNS}}], title="resumed run")
    return 0


def _warn_empty_rounds(result) -> None:
    """empty_round_policy=skip: the run finished, but never silently about the rounds nothing survived."""
    if result.empty_rounds:
        shown = ", ".join(map(str, result.empty_rounds[:10])) + (", ..." if len(result.empty_rounds) > 10 else "")
        print(f"fedharness: warning: run {result.run_id}: {len(result.empty_rounds)} of {len(result.history)} rounds "
              f"had no surviving client update (rounds {shown}; empty_round_policy=skip)", file=sys.stderr)


def cmd_validate(args) -> int:
    import yaml

    cfg = load_config(args.spec, args.overrides, plugins=args.plugin)
    print(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), end="")
    return 0


def cmd_algorithms(args) -> int:
    from algorithms import registry
    from harness import plugins

    plugins.load_installed()
    plugins.load(args.plugin)
    if args.markdown:
        print(algorithms_markdown())
        return 0
    for name in registry.names():
        cls = registry.get(name)
        print(f"{name}  —  {_summary(cls)}")
        if cls.source:
            print(f"    defaults from: {cls.source}")
        for field, info in cls.Params.model_fields.items():
            print(f"    {field} = {info.default!r}    {info.description or ''}")
        if not cls.Params.model_fields:
            print("    (no hyperparameters)")
        if not cls.has_global_model:
            print("    global model: none (global_* metrics are NaN)")
    return 0


def _summary(cls) -> str:
    return (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""


def algorithms_markdown() -> str:
    """One table row per algorithm: name, summary, hyperparameters = defaults, their source."""
    from algorithms import registry

    rows = ["| algorithm | what it does | hyperparameters (defaults) | defaults from | global model |",
            "|---|---|---|---|---|"]
    for name in registry.names():
        cls = registry.get(name)
        params = ", ".join(f"`{f}={info.default!r}`" for f, info in cls.Params.model_fields.items()) or "—"
        cells = [f"`{name}`", _summary(cls), params, cls.source or "—", "yes" if cls.has_global_model else "no"]
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(rows)


if __name__ == "__main__":
    raise SystemExit(main())
