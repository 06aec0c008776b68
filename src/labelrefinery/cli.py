"""Command line: ``refinery run | report | evaluate | models``.

Flags of ``refinery run`` are built from :class:`labelrefinery.config.RunConfig`;
a preset supplies defaults and every flag given overrides it. Bad input exits
with status 2 and a one-line error naming the value and the fix.
"""

from __future__ import annotations

import argparse
import sys
import typing
from dataclasses import MISSING, fields
from pathlib import Path

from .config import PRESETS, RunConfig, resolve_config

EXIT_BAD_INPUT = 2


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    hints = typing.get_type_hints(RunConfig)
    for f in fields(RunConfig):
        hint = hints[f.name]
        default = f.default if f.default is not MISSING else None
        by_preset = {p: v[f.name] for p, v in PRESETS.items() if f.name in v and v[f.name] != default}
        shown = ", ".join(f"{p}: {v}" for p, v in by_preset.items())
        help_text = f"{f.metadata.get('help', '')} (default: {default}" + (f"; preset {shown})" if shown else ")")
        kwargs: dict = {"dest": f.name, "default": argparse.SUPPRESS, "help": help_text}
        if hint is bool:
            parser.add_argument(_flag(f.name), action=argparse.BooleanOptionalAction, **kwargs)
            continue
        base = next((t for t in typing.get_args(hint) if t is not type(None)), hint)
        kwargs["type"] = base
        kwargs["metavar"] = {int: "N", float: "X", str: "S"}.get(base, "S")
        if "choices" in f.metadata:
            kwargs["choices"] = f.metadata["choices"]
            kwargs.pop("metavar")
        parser.add_argument(_flag(f.name), **kwargs)


def build_parser() -> argparse.ArgumentParser:
    """The ``refinery`` argument parser with its subcommands."""
    parser = argparse.ArgumentParser(
        prog="refinery",
        description="Label Refinery: train generations of classifiers, each on its predecessor's soft labels.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser(
        "run", help="train R1..Rn for one or more seeds and print the results table",
        description="Train a chain of generations R1..Rn (R1 on ground truth, each next one on the previous "
        "generation's refined labels) for seeds 0..N-1, then print test top-1 accuracy per generation as "
        "mean ± std over seeds. Rerunning on an existing run directory continues where it stopped.",
    )
    run.add_argument("--preset", default="quick", choices=sorted(PRESETS),
                     help="defaults to start from: quick (CPU, convnet, ~6 min on 2 cores), blog (the write-up's protocol, "
                     "ResNet-50), paper (per-crop labels, random crops, SGD); default quick")
    run.add_argument("--name", default=None, help="run directory name under --runs-dir (default: from the settings)")
    run.add_argument("--runs-dir", default="runs", help="parent directory of run directories (default: runs)")
    _add_config_flags(run)

    report = sub.add_parser("report", help="rebuild the results table from one or more run directories")
    report.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR")
    report.add_argument("--out", type=Path, default=None,
                        help="also write results.json / results.md there (default: into a single RUN_DIR)")

    ev = sub.add_parser("evaluate", help="test accuracy of saved generations, alone or as an ensemble")
    ev.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    ev.add_argument("--ensemble", default="", help="comma-separated generations whose averaged softmax is evaluated")
    ev.add_argument("--device", default="auto")

    sub.add_parser("models", help="list the model names --model accepts")
    return parser


def default_run_name(cfg: RunConfig, preset: str) -> str:
    """``<preset>-<dataset>-<model>-<augment>-<labels>``, safe as a directory name."""
    dataset = cfg.dataset.replace("folder:", "folder-").replace("/", "_").strip("_")
    return f"{preset}-{dataset}-{cfg.model.replace(':', '-')}-{cfg.augment}-{cfg.labels}"


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 2 bad input, 130 interrupted)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from .data import DataError
    from .refinery import RunDirError

    try:
        if args.command == "models":
            from .models import available_models

            print("\n".join(available_models()))
            return 0
        if args.command == "report":
            from .report import summarize_run, write_results, format_table

            results = [summarize_run(d) for d in args.run_dirs]
            out = args.out or (args.run_dirs[0] if len(args.run_dirs) == 1 else None)
            text = write_results(out, results) if out is not None else format_table(results)
            print(text)
            return 0
        if args.command == "evaluate":
            from .evaluate import evaluate_run

            print(evaluate_run(args.run_dir, args.ensemble, args.device))
            return 0
        overrides = {f.name: getattr(args, f.name) for f in fields(RunConfig) if hasattr(args, f.name)}
        cfg = resolve_config(args.preset, overrides)
        from .refinery import run

        if args.name is not None and (not args.name.strip() or "/" in args.name or args.name in (".", "..")):
            raise ValueError(f"--name must be a plain directory name, got {args.name!r}; or leave it out")
        run_dir = Path(args.runs_dir) / (args.name or default_run_name(cfg, args.preset))
        from .report import format_table

        results = run(cfg, run_dir)
        print(format_table([results]))
        print(f"run directory: {run_dir}")
        return 0
    except (ValueError, DataError, RunDirError, ImportError, OSError) as e:
        print(f"refinery: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("refinery: interrupted; finished work is saved, rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
