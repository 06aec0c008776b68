"""Command line: ``refinery run | report | evaluate | label-issues | inspect | predict | export | models``.

Flags of ``refinery run`` are built from the fields of
:class:`labelrefinery.config.RunConfig` and its sections; a preset supplies
defaults and every flag given overrides it. A :class:`~labelrefinery.errors.UserError`
(bad input) exits with status 2 and one line naming the value and the fix;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from .config import PRESETS, RunConfig, absolute_paths, config_file_values, flag_name, resolve_config
from .dist import is_main_process, joined, process_info
from .errors import ConfigError, UserError
from .runflags import DEFAULT_PRESET, EXIT_BAD_INPUT, add_run_parser, did_you_mean, int_list



class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (``refinery: error: ...``) and exit status 2, and which
    takes no abbreviated flags (``--seed`` is not ``--seeds``)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):  # noqa: D401 - argparse's hook
        word = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)$", message)
        if word:  # a misspelt subcommand or choice: the closest one
            message += did_you_mean(word.group(1), re.findall(r"'([^']*)'", word.group(2)))
        self.exit(EXIT_BAD_INPUT, f"refinery: error: {message}; see {self.prog} --help\n")


def _add_generation_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--generation", type=int, default=None,
                        help="with a run directory: which generation (default: the seed's best by validation top-1)")
    parser.add_argument("--seed", type=int, default=0, help="with a run directory: whose chain (default: 0)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | mps (default: cpu)")


def _add_report_parser(sub) -> None:
    """``refinery report``."""
    report = sub.add_parser("report", help="rebuild the results table from one or more run directories")
    report.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR")
    report.add_argument("--out", type=Path, default=None,
                        help="also write results.json / results.md there (default: into a single RUN_DIR)")


def _add_evaluate_parser(sub) -> None:
    """``refinery evaluate``."""
    ev = sub.add_parser("evaluate", help="test accuracy of saved generations, alone or as an ensemble")
    ev.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    ev.add_argument("--ensemble", type=int_list("ensemble"), default=None, metavar="N,N",
                    help="comma-separated generations whose averaged softmax is evaluated")
    ev.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps (default: auto)")


def _add_label_issues_parser(sub) -> None:
    """``refinery label-issues``."""
    li = sub.add_parser(
        "label-issues", help="rank the training images whose given label the refined labels dispute (CSV)",
        description="Write RUN_DIR/label_issues.csv: the training images whose refined argmax differs from the "
        "given label, most disputed first (lowest refined probability of the given label), with the suggested "
        "label, margin and refined top-3; and the refined labels of every training image as .npy files in "
        "dataset order (cleanlab's pred_probs and labels).")
    li.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    li.add_argument("--generation", type=int, default=None,
                    help="whose refined labels (default: the seed's best generation by validation top-1)")
    li.add_argument("--seed", type=int, default=None, help="which seed's chain (default: 0)")
    li.add_argument("--all-seeds", action="store_true",
                    help="rank by every seed's opinion: each image's refined probabilities averaged over the seeds "
                    "that checked it (each seed's best generation, or --generation); steadier than one seed's")
    li.add_argument("--out", type=Path, default=None,
                    help="CSV path; the .npy files go beside it (default: RUN_DIR/label_issues.csv)")
    li.add_argument("--test", action="store_true",
                    help="check the test images the run reports on instead (by the saved model; index = position in "
                    "the test split): test labels can be wrong too")
    li.add_argument("--all", action="store_true", dest="include_all",
                    help="a row for every checked image, not only the disputed ones")
    li.add_argument("--write-labels", type=Path, default=None, metavar="FILE.csv",
                    help="also write the dataset's label file (path,label,split; folder: and csv: datasets) with "
                    "the suggested label applied to the disputed images, for `refinery run --dataset csv:FILE.csv`")
    li.add_argument("--min-margin", type=float, default=0.0, metavar="P",
                    help="with --write-labels: change a label only where the suggested class's probability exceeds "
                    "the given label's by more than P (0 to 1; default 0: every disputed image)")


def _add_inspect_parser(sub) -> None:
    """``refinery inspect``."""
    ins = sub.add_parser(
        "inspect", help="write an HTML report of what the refinery did to the labels (plots, image grids)",
        description="Write one self-contained HTML page (plots and images embedded; opens from disk) about one or "
        "more finished run directories: the results, what the refined labels became per generation, training "
        "images with their top-3 refined labels at every generation (the paper's Figure 4), the label issues, and "
        "the run's facts; plus report.json and report_*.csv with the numbers behind it. Reads the run directory "
        "only (works on a run still training: finished generations are shown).")
    ins.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR")
    ins.add_argument("--out", type=Path, default=None,
                     help="the page's path, ending in .html; its data files go beside it (default: "
                     "RUN_DIR/report.html for one run, ./report.html for several)")
    ins.add_argument("--images", type=int, default=8,
                     help="images per group in the image grids (most disputed, most changed, random, ...) "
                     "(default: 8)")
    ins.add_argument("--seed", type=int, default=None,
                     help="whose chain the label sections and image grids show (default: the first seed with a "
                     "finished generation, normally 0)")


def _add_predict_parser(sub) -> None:
    """``refinery predict``."""
    pr = sub.add_parser(
        "predict", help="classify image files with a trained generation (class names and probabilities, CSV)",
        description="Classify image files (or folders of them, searched recursively) with a trained generation: "
        "each image is decoded, converted to the model's channels, resized (shorter side) and centre-cropped to "
        "the size the model was trained at, normalised as in training; prints (or writes) a CSV row per image "
        "with the top-k class names and probabilities.")
    pr.add_argument("source", type=Path, metavar="CHECKPOINT_OR_RUN_DIR",
                    help="a model.safetensors this tool wrote, or a run directory")
    pr.add_argument("images", type=Path, nargs="+", metavar="IMAGE_OR_FOLDER")
    pr.add_argument("--top-k", type=int, default=3, help="classes per image, most probable first (default: 3)")
    pr.add_argument("--out", type=Path, default=None, help="write the CSV here (default: print it)")
    pr.add_argument("--skip-bad-images", action="store_true",
                    help="leave out image files that cannot be read (listed and counted on stderr) instead of stopping")
    _add_generation_flags(pr)


def _add_export_parser(sub) -> None:
    """``refinery export``."""
    ex = sub.add_parser(
        "export", help="write a trained generation, preprocessing included, as TorchScript, torch.export or ONNX",
        description="Write a trained generation for use without labelrefinery. The written model includes its "
        "preprocessing (evaluation crop, normalisation): it takes (N, C, S, S) float images in [0, 1] at the "
        "training size S (resize others first) and returns logits. torchscript: torch.jit.load(FILE); export: "
        "torch.export.load(FILE).module(); onnx: needs pip install onnx onnxscript.")
    ex.add_argument("source", type=Path, metavar="CHECKPOINT_OR_RUN_DIR")
    ex.add_argument("--format", required=True, choices=["torchscript", "export", "onnx"], dest="fmt")
    ex.add_argument("--out", type=Path, default=None,
                    help="the file to write (default: model.pt / model.pt2 / model.onnx in the working directory)")
    _add_generation_flags(ex)


def _add_models_parser(sub) -> None:
    """``refinery models``."""
    sub.add_parser("models", help="list the model names --model accepts")


def build_parser(preset: str = DEFAULT_PRESET) -> argparse.ArgumentParser:
    """The ``refinery`` argument parser with its subcommands; ``refinery run --help`` shows ``preset``'s
    defaults."""
    parser = _Parser(
        prog="refinery",
        description="Label Refinery: train generations of classifiers, each on its predecessor's soft labels.",
    )
    from .version import code_version

    parser.add_argument("--version", action="version", version=f"refinery (labelrefinery) {code_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (add_parser, _) in SUBCOMMANDS.items():
        add_parser(sub, preset) if name == "run" else add_parser(sub)
    return parser


def _parse(argv: list[str]) -> argparse.Namespace:
    """The arguments of ``argv``; an unknown flag is refused naming the closest flag of its subcommand and the
    subcommand's own help (exits 2 through argparse)."""
    given = next((b if a == "--preset" else a.split("=", 1)[1] for a, b in zip(argv, [*argv[1:], ""])
                  if a == "--preset" or a.startswith("--preset=")), DEFAULT_PRESET)
    parser = build_parser(given if given in PRESETS else DEFAULT_PRESET)
    args, extra = parser.parse_known_args(argv)
    if extra:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[args.command]
        flags = [s for a in sub._actions for s in a.option_strings]
        first = next((e for e in extra if e.startswith("-")), extra[0])
        hint = did_you_mean(first.split("=", 1)[0], flags) if first.startswith("-") else ""
        sub.error(f"unrecognized argument{'s' if len(extra) > 1 else ''}: {' '.join(extra)}{hint}")
    return args


def default_run_name(cfg: RunConfig, preset: str) -> str:
    """``<preset>-<dataset>-<model>-<augment>-<labels>``, safe as a directory name."""
    dataset = cfg.data.dataset.replace("folder:", "folder-").replace("csv:", "csv-").replace("/", "_").strip("_")
    return f"{preset}-{dataset}-{cfg.model.replace(':', '-')}-{cfg.data.augment}-{cfg.refinement.labels}"


def _run(args: argparse.Namespace) -> int:
    from .chain import run
    from .config import leaf_names
    from .report.tables import format_table

    overrides = {name: getattr(args, name) for name in leaf_names() if hasattr(args, name)}
    if (args.refinery_mean is None) != (args.refinery_std is None):
        raise ConfigError("--refinery-mean and --refinery-std go together; give both (or --refinery-normalization)")
    if args.refinery_mean is not None:
        if "refinery_normalization" in overrides:
            raise ConfigError("give either --refinery-mean/--refinery-std or --refinery-normalization, not both")
        overrides["refinery_normalization"] = f"{args.refinery_mean}/{args.refinery_std}"
    if args.resume is not None:
        cfg, run_dir = _resume_settings(args, overrides)
    else:
        preset = args.preset or DEFAULT_PRESET
        from_file = config_file_values(args.config) if args.config is not None else {}
        cfg = resolve_config(preset, absolute_paths({**from_file, **overrides}))
        if args.name is not None and (not args.name.strip() or "/" in args.name or args.name in (".", "..")):
            raise ConfigError(f"--name must be a plain directory name, got {args.name!r}; or leave it out")
        run_dir = Path(args.runs_dir or "runs") / (args.name or default_run_name(cfg, preset))
    results = run(cfg, run_dir)
    if is_main_process():  # under torchrun the main process prints for all
        print(format_table([results]))
        print(f"run directory: {run_dir}")
    return 0


def _resume_settings(args: argparse.Namespace, overrides: dict) -> tuple[RunConfig, Path]:
    """``--resume RUN_DIR``: the run's saved settings with the resumable flags given on top.

    Raises:
        ConfigError: flags that choose another run or change what a finished generation means.
        RunDirError: not a run directory, or a damaged ``config.yaml``.
    """
    from .config import RESUMABLE_CHANGES
    from .rundir import RunDir

    clashing = [f for f, v in (("--preset", args.preset), ("--config", args.config), ("--name", args.name),
                               ("--runs-dir", args.runs_dir)) if v is not None]
    if clashing:
        raise ConfigError(f"--resume takes its settings and place from {args.resume}; leave out {', '.join(clashing)}")
    saved = RunDir(args.resume).read_config()
    merged = {**saved.flat(), **absolute_paths(overrides)}
    if "ensemble" not in overrides and any(g > merged["generations"] for g in merged["ensemble"]):
        merged["ensemble"] = []  # an --ensemble beyond the generations this command runs: reported when they exist
    cfg = RunConfig.from_flat(merged)  # a value that is invalid in itself is named as such first
    old, new = absolute_paths(saved.flat()), absolute_paths(overrides)
    changed = sorted(k for k, v in new.items() if k not in RESUMABLE_CHANGES and old[k] != v)
    if changed:
        raise ConfigError(f"--resume keeps the run's settings, but {', '.join(flag_name(k) for k in changed)} would "
                          f"change what its finished generations mean; to try them, start a new run: --config "
                          f"{args.resume / 'config.yaml'} --name NEW_NAME plus those flags")
    return cfg, args.resume


def _report(args: argparse.Namespace) -> int:
    from .report.tables import format_table, summarize_run
    from .rundir import write_results_files

    results = [summarize_run(d) for d in args.run_dirs]
    empty = [str(r["run_dir"]) for r in results if not r["per_seed"]]
    if empty:
        from .errors import RunDirError

        raise RunDirError(f"{', '.join(empty)} has no finished generation yet; report it once R1 has finished")
    out = args.out or (args.run_dirs[0] if len(args.run_dirs) == 1 else None)
    text = format_table(results)
    if out is not None and args.out is None:  # into the run directory itself, if it can be written
        from .errors import RunDirError
        from .rundir import RunDir

        try:
            with RunDir(out).lock():
                write_results_files(out, results[0], text)
        except RunDirError as e:  # read-only, or a run holds it: the table is still the answer
            print(f"refinery: note: results.json/results.md not updated ({e}); give --out DIR to save them "
                  "elsewhere", file=sys.stderr)
    elif out is not None:
        write_results_files(out, results[0] if len(results) == 1 else results, text)
    print(text)
    return 0


def _label_issues(args: argparse.Namespace) -> int:
    from .report.labelissues import (check_fixed_labels_path, check_issue_options, issues_line, write_fixed_labels,
                                     write_label_issues)

    check_issue_options(args.seed, args.all_seeds, args.test, args.write_labels, args.min_margin)
    if args.write_labels is not None:
        check_fixed_labels_path(args.run_dir, args.write_labels)
    path, rows, total, generations = write_label_issues(args.run_dir, args.generation, args.seed or 0, args.out,
                                                        args.include_all, args.all_seeds, args.test)
    print(issues_line(path, rows, total, generations, args.include_all, args.generation is None))
    if args.write_labels is not None:
        print(write_fixed_labels(args.run_dir, generations, args.write_labels, args.min_margin))
    return 0


def _load_classifier(args: argparse.Namespace, out: Path | None, suffix: str):
    """The generation ``predict`` or ``export`` uses, once ``out`` (if any) is known to be a fitting path."""
    from .classifier import check_output_path, load_classifier
    from .device import resolve_device

    if out is not None:
        check_output_path(args.source, out, suffix)
    return load_classifier(args.source, args.generation, args.seed, resolve_device(args.device))


def _predict(args: argparse.Namespace) -> int:
    from .classifier import predict_to

    classifier = _load_classifier(args, args.out, ".csv")
    text, skipped = predict_to(classifier, args.images, args.top_k, args.out, args.skip_bad_images)
    print(text, end="")
    if skipped:
        shown = ", ".join(map(str, skipped[:5])) + (f" and {len(skipped) - 5} more" if len(skipped) > 5 else "")
        print(f"refinery: left out {len(skipped)} unreadable image file{'s' if len(skipped) > 1 else ''}: {shown}",
              file=sys.stderr)
    return 0


def _export(args: argparse.Namespace) -> int:
    from .classifier import EXPORT_FORMATS, export_with_summary

    out = args.out or Path(f"model{EXPORT_FORMATS[args.fmt]}")
    classifier = _load_classifier(args, out, EXPORT_FORMATS[args.fmt])
    print(export_with_summary(classifier, out, args.fmt))
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from .report.inspection import inspect_runs

    path, seconds = inspect_runs(args.run_dirs, args.out, args.images, args.seed)
    print(f"report: {path} and its data files beside it, in {seconds:.1f} s (open it in a browser)")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from .evaluate import evaluate_run

    print(evaluate_run(args.run_dir, args.ensemble, args.device))
    return 0


def _models(args: argparse.Namespace) -> int:
    from .models import available_models

    print("\n".join(available_models()))
    return 0


# Each subcommand, in the order --help lists them: (adds its parser, handles its arguments -> exit status).
SUBCOMMANDS = {
    "run": (add_run_parser, _run),
    "report": (_add_report_parser, _report),
    "evaluate": (_add_evaluate_parser, _evaluate),
    "label-issues": (_add_label_issues_parser, _label_issues),
    "inspect": (_add_inspect_parser, _inspect),
    "predict": (_add_predict_parser, _predict),
    "export": (_add_export_parser, _export),
    "models": (_add_models_parser, _models),
}


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 2 bad input, 130 interrupted)."""
    try:
        args = _parse(sys.argv[1:] if argv is None else list(argv))
    except SystemExit as e:  # --help (0) or a one-line usage error (2): returned like every other outcome
        return e.code if isinstance(e.code, int) else EXIT_BAD_INPUT
    try:
        _, handle = SUBCOMMANDS[args.command]
        return handle(args)
    except UserError as e:
        info = process_info()
        if info.is_main:  # under torchrun every process checks the same settings: one says what is wrong
            print(f"refinery: error: {e}", file=sys.stderr)
        elif joined():  # one process's own trouble while training: said by it, the others stopped by torchrun
            print(f"refinery: error (rank {info.rank}): {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        if is_main_process():
            print("refinery: interrupted; finished epochs and generations are kept: rerun the same command to "
                  "continue", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
