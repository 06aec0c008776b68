"""The flags of ``refinery run``: built from the settings of :class:`~labelrefinery.config.RunConfig`, grouped
by topic in ``--help`` with one short line each, the presets with their cost, "did you mean" for a misspelt flag
or subcommand, and the full flag reference of ``docs/flags.md``.

The full description of every setting stays with its field (``metadata["help"]`` in :mod:`labelrefinery.config`);
this module holds the short form a terminal shows and the topic each flag belongs to.
"""

from __future__ import annotations

import argparse
import difflib
import typing
from dataclasses import MISSING
from pathlib import Path

from .config import PRESETS, flag_name, leaf_fields, parse_int_list, parse_seeds
from .errors import ConfigError

EXIT_BAD_INPUT = 2
DEFAULT_PRESET = "quick"

# (topic, [(setting or flag, its short help: what it is, with units)]) in the order --help lists them. Settings
# are RunConfig's leaf names; names starting with "--" are flags of `refinery run` itself.
RUN_GROUPS: list[tuple[str, list[tuple[str, str]]]] = [
    ("what to run", [
        ("--preset", "defaults to start from (listed below)"),
        ("--config", "a YAML file of settings (a run's config.yaml reproduces it); flags override it"),
        ("--resume", "continue RUN_DIR with its saved settings"),
        ("generations", "models in the chain, counting R1"),
        ("seeds", "N (seeds 0..N-1) or a list 3,7,11: the whole chain once per seed"),
    ]),
    ("data", [
        ("dataset", "fashion-mnist | mnist | digits | synthetic | cifar10 | cifar100 | svhn | "
                    "fashion-mnist-rows | mnist-rows | folder:PATH | csv:FILE"),
        ("data_dir", "where the dataset files are (or are downloaded to)"),
        ("train_size", "use only this many training images (stratified)"),
        ("test_size", "evaluate on only the first N test images"),
        ("val_fraction", "share of the training images held out for validation (0-1)"),
        ("classes", "csv: a file of class names, one per line, in order"),
        ("image_size", "folder/csv: resize and centre-crop to this many pixels per side"),
        ("svhn_extra", "svhn: add the 531,131-image extra split"),
        ("augment", "training augmentation"),
        ("static_copies", "augment static: stored augmented copies per image"),
        ("skip_bad_images", "folder/csv: leave out files that cannot be decoded (counted)"),
    ]),
    ("model", [
        ("model", "a name from `refinery models`, timm:NAME, or module.path:factory"),
        ("refinery_checkpoint", "a trained model that labels generation 1 instead of the ground truth"),
        ("refinery_model", "the model name of --refinery-checkpoint when the file does not store it"),
        ("refinery_normalization", "input normalisation of --refinery-checkpoint: auto | imagenet | dataset | "
                                   "M,M,M/S,S,S"),
        ("--refinery-mean", "with --refinery-std: per-channel mean of --refinery-checkpoint, in [0, 1] pixels"),
        ("--refinery-std", "see --refinery-mean"),
    ]),
    ("training (every generation)", [
        ("epochs", "maximum epochs per generation"),
        ("student_epochs", "epochs of generations 2 and later, on a schedule of that length (0 = --epochs)"),
        ("batch_size", "images per optimizer step, over all processes"),
        ("optimizer", "adam | sgd (momentum 0.9, nesterov)"),
        ("lr", "learning rate (the peak for onecycle)"),
        ("weight_decay", "L2 weight decay coefficient"),
        ("lr_schedule", "plateau | onecycle | cosine | steps"),
        ("lr_steps", "steps: epochs (0-based) where lr is multiplied by --plateau-factor"),
        ("plateau_factor", "lr multiplier on a plateau or at a step"),
        ("plateau_patience_epochs", "plateau: epochs without validation gain before lr drops"),
        ("min_lr", "plateau: the lowest learning rate"),
        ("early_stop_patience_epochs", "stop after this many epochs without validation gain (0 = never)"),
        ("early_stop_min_delta", "validation gain that counts, in percentage points"),
        ("restore_best", "end each generation with its best-validation weights"),
        ("label_smoothing", "epsilon: targets mixed with the uniform distribution"),
        ("mixup", "alpha: pairs of images and their targets mixed, lam ~ Beta(alpha, alpha) (0 = off)"),
        ("train_scale_start", "progressive resizing: first epochs train at this fraction of the side (1 = off)"),
        ("recalibrate_bn", "recompute BatchNorm statistics after every epoch"),
    ]),
    ("refinement", [
        ("labels", "offline: refined labels once per generation | online: per augmented crop"),
        ("temperature", "softmax temperature T of refined labels"),
        ("label_form", "soft | hard | topk:K"),
        ("gt_weight", "alpha: targets = alpha * one-hot given label + (1 - alpha) * refined labels"),
        ("cross_fit", "K >= 2: out-of-sample refined labels from K fold models (0 = in-sample)"),
        ("adversarial_jitter", "online: probability per image of its adversarial jitter"),
        ("jitter_eps", "adversarial jitter step, in [0, 1] pixel units"),
        ("ensemble", "generations whose averaged softmax is also evaluated, e.g. 2,3"),
        ("controls", "also train label-smoothing and equal-compute controls per seed"),
    ]),
    ("wrong labels (docs/wrong-labels.md)", [
        ("label_noise", "inject noise for a benchmark: symmetric:P | pairflip:P | swap:P | idn:P (annotator-like)"),
        ("trusted", "verified labels as the validation split: FILE (image,label CSV) or N injected ones"),
        ("true_labels", "verified labels (image,label CSV) that only score the refined labels"),
        ("noise_prior", "0 | P | auto | classwise | verified | evidence: how refined labels account for noise"),
        ("label_issues", "write label_issues.csv at the end"),
    ]),
    ("execution", [
        ("device", "auto | cpu | cuda | cuda:N | mps"),
        ("precision", "auto (bf16 where the CPU/GPU has it) | fp32 | bf16 | fp16"),
        ("threads", "CPU threads for torch (0 = all cores)"),
        ("compile", "torch.compile the model (pays only on long runs)"),
        ("data_in_memory", "folder/csv: decode once and hold in memory, or stream from the files"),
        ("workers", "processes decoding image files (0 = one per core, at most 8)"),
        ("cache_dir", "where folder/csv datasets are cached as uint8"),
        ("sync_bn", "torchrun on CUDA: BatchNorm statistics over the global batch"),
        ("progress", "a progress bar per epoch"),
    ]),
    ("output", [
        ("--name", "run directory name under --runs-dir (default: from the settings)"),
        ("--runs-dir", "parent directory of run directories (default: runs)"),
        ("label_storage", "how labels.npz stores refined labels: auto | float32 | float16 | topk:J"),
        ("tensorboard", "also write TensorBoard scalars to RUN_DIR/tb/"),
    ]),
]

# What each preset is for and what it costs, for --help's epilog (measured: BENCHMARKS.md).
PRESET_LINES = [
    "quick   first run: convnet, 3 generations x 4 epochs, 1 seed (about 3.5 min on 2 bf16 CPU cores)",
    "refine  does refinement pay? 3 seeds x 3 generations x 16 epochs + controls: 112 epochs per seed",
    "noisy   my labels may be wrong: noise model from the evidence, mixup, 3 seeds, controls, label issues",
    "blog    the write-up's protocol: ResNet-50, static augmentation, 5 seeds, early stopping",
    "paper   the paper's protocol: per-crop labels, random crops, SGD, 5 generations",
]

RUN_EXAMPLES = [
    "refinery run --preset quick",
    "refinery run --dataset folder:~/photos --preset noisy --trusted verified.csv",
    "refinery run --resume runs/quick-fashion-mnist-convnet-none-offline --generations 4",
]


_ENTRY = {key: (title, text) for title, entries in RUN_GROUPS for key, text in entries}  # flag -> (topic, help)


def short_help(name: str) -> str:
    """The one-line help of a setting or ``--flag`` of ``refinery run`` (:data:`RUN_GROUPS`).

    Raises:
        KeyError: a name no group lists (a new setting must be given a group and a short help there).
    """
    return _ENTRY[name][1]


def group_of(name: str) -> str:
    """The --help topic of a setting or ``--flag`` (:data:`RUN_GROUPS`); KeyError if none lists it."""
    return _ENTRY[name][0]


def did_you_mean(word: str, choices: list[str]) -> str:
    """``" (did you mean X?)"`` for the closest of ``choices`` to ``word`` (difflib ratio >= 0.6), else ``""``."""
    found = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" (did you mean {found[0]}?)" if found else ""


def flag_reference() -> str:
    """Markdown of every ``refinery run`` setting grouped as ``--help`` groups them, with its full description
    (``metadata["help"]``) and its default without a preset: the text of ``docs/flags.md``."""
    by_name = {f.name: (f.metadata.get("help", ""), _default_of(f)) for f, _ in leaf_fields()}
    out = ["# `refinery run` flags", "", "Every setting of `refinery run`, grouped as `refinery run --help` groups "
           "them, with its full description and its default without a preset (presets set their own: "
           "`src/labelrefinery/config/presets.py`). In a `--config` YAML file each is written with underscores "
           "(`batch_size: 128`). Generated from the code by `python -m labelrefinery.runflags > docs/flags.md`; "
           "a test keeps it current.", ""]
    for title, entries in RUN_GROUPS:
        out += [f"## {title[0].upper()}{title[1:]}", "", "| flag | what it does | default |", "|---|---|---|"]
        for key, text in entries:
            if key.startswith("--"):
                out.append(f"| `{key}` | {text} | |")
                continue
            full, default = by_name[key]
            shown = ",".join(map(str, default)) or "none" if isinstance(default, list) else default
            out.append(f"| `{flag_name(key)}` | {full.replace('|', '&#124;')} | `{'none' if shown is None else shown}` |")
        out.append("")
    out += ["## Presets", "", "`--preset NAME` sets the defaults above to the preset's (measured costs: "
            "BENCHMARKS.md):", "", *[f"- `{line.split()[0]}`: {line.split(None, 1)[1]}" for line in PRESET_LINES], ""]
    return "\n".join(out)


def int_list(name: str):
    """An argparse ``type`` for comma-separated integers of setting ``name`` (a bad list: argparse's one-line error)."""
    def parse(text: str) -> list[int]:
        return parse_int_list(text, name)

    parse.__name__ = "comma-separated integers"
    return _checked(parse)


def _checked(parse):
    """``parse`` with its ConfigError turned into argparse's one-line usage error."""
    def wrapped(text: str):
        try:
            return parse(text)
        except ConfigError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    wrapped.__name__ = parse.__name__
    return wrapped


def _default_of(f) -> object:
    if f.default is not MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not MISSING else None


def _shown_default(f, preset: str) -> str:
    value = PRESETS[preset].get(f.name, _default_of(f))
    if isinstance(value, list):
        value = ",".join(map(str, value)) or "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    return "none" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def _add_config_flags(groups: dict[str, argparse._ArgumentGroup], preset: str) -> None:
    """Every setting of :class:`~labelrefinery.config.RunConfig` as a flag in its --help topic, with its short
    help and ``preset``'s default (full descriptions: ``docs/flags.md``)."""
    for f, hint in leaf_fields():
        parser = groups[group_of(f.name)]
        kwargs: dict = {"dest": f.name, "default": argparse.SUPPRESS,
                        "help": f"{short_help(f.name)} (default: {_shown_default(f, preset)})"}
        if hint is bool:
            parser.add_argument(flag_name(f.name), action=argparse.BooleanOptionalAction, **kwargs)
            continue
        if f.name == "seeds":  # a count or a list
            parser.add_argument(flag_name(f.name), type=_checked(parse_seeds), metavar="N|N,N", **kwargs)
            continue
        if typing.get_origin(hint) is list:
            parser.add_argument(flag_name(f.name), type=int_list(f.name), metavar="N,N", **kwargs)
            continue
        base = next((t for t in typing.get_args(hint) if t is not type(None)), hint)
        kwargs["type"] = base
        kwargs["metavar"] = {int: "N", float: "X", str: "S"}.get(base, "S")
        if "choices" in f.metadata:
            kwargs["choices"] = f.metadata["choices"]
            kwargs.pop("metavar")
        parser.add_argument(flag_name(f.name), **kwargs)


def add_run_parser(sub, preset: str = DEFAULT_PRESET) -> None:
    """``refinery run``: the flags of :class:`~labelrefinery.config.RunConfig`, grouped by topic, and where the
    run goes; --help shows ``preset``'s defaults."""
    run = sub.add_parser(
        "run", help="train R1..Rn for one or more seeds and print the results table",
        usage="refinery run [--preset NAME] [--dataset NAME] [options]", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train a chain of generations R1..Rn (R1 on the given labels, each next one on the\n"
        "previous generation's refined labels) for every seed, then print test top-1 per generation\n"
        "(mean ± std over seeds). Rerunning the same command continues where it stopped.\n"
        f"Defaults shown are preset {preset}'s (`refinery run --preset NAME --help` shows another's);\n"
        "every flag in full: docs/flags.md.",
        epilog="presets:\n" + "\n".join(f"  {line}" for line in PRESET_LINES)
        + "\n\nexamples:\n" + "\n".join(f"  {line}" for line in RUN_EXAMPLES))
    groups = {title: run.add_argument_group(title) for title, _ in RUN_GROUPS}
    own = {name: groups[group_of(name)] for name in ("--preset", "--config", "--resume", "--name", "--runs-dir",
                                                      "--refinery-mean", "--refinery-std")}
    own["--preset"].add_argument("--preset", default=None, choices=sorted(PRESETS), help=short_help("--preset"))
    own["--config"].add_argument("--config", type=Path, default=None, metavar="FILE", help=short_help("--config"))
    own["--resume"].add_argument("--resume", type=Path, default=None, metavar="RUN_DIR",
                                 help=short_help("--resume") + "; only --generations, --seeds, --controls, "
                                 "--ensemble and execution flags may be given")
    own["--name"].add_argument("--name", default=None, help=short_help("--name"))
    own["--runs-dir"].add_argument("--runs-dir", default=None, help=short_help("--runs-dir"))
    _add_config_flags(groups, preset)
    own["--refinery-mean"].add_argument("--refinery-mean", default=None, metavar="M,M,M",
                                        help=short_help("--refinery-mean"))
    own["--refinery-std"].add_argument("--refinery-std", default=None, metavar="S,S,S",
                                       help=short_help("--refinery-std"))

if __name__ == "__main__":
    print(flag_reference())
