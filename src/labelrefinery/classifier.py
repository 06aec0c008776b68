"""A trained generation, ready to use outside the tool: load it, predict image files, export it.

Every checkpoint this tool writes stores what using it needs (see
:func:`labelrefinery.checkpoint.preprocessing_record`): the model spec, the
class names, and the preprocessing it was trained with (normalisation mean/std,
channels, stored image size, evaluation view). :func:`load_classifier` turns a
``model.safetensors`` (or a run directory and a generation) into a
:class:`Classifier`, an ``nn.Module`` that takes ordinary images, ``(N, C, H, W)``
uint8 or float in [0, 1], and returns logits: its preprocessing is part of the
module, so it is also part of what :func:`export_classifier` writes.
"""

from __future__ import annotations

import csv
import json
import io
import warnings
from pathlib import Path

import torch
from torchvision.transforms.v2 import functional as F  # imported here: torch.jit.trace cannot import it

from .checkpoint import load_checkpoint, model_from_state, preprocessing_record, spec_from_dict
from .console import interactive
from .deployed import DEPLOYED_BATCH_SIZE, Classifier
from .data.files import to_rgb
from .errors import CheckpointError, ConfigError, DataError
from .fileio import atomic_write_text
from .protocol import load_run_dataset
from .report.tables import best_of
from .rundir import RunDir

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


def _run_preprocessing(rd: RunDir) -> dict:
    """The preprocessing of a run whose checkpoints predate storing it: recomputed from its dataset."""
    cfg = rd.read_config()
    d = cfg.data
    dataset = load_run_dataset(cfg)
    return preprocessing_record(dataset, d.augment)


def load_classifier(source: str | Path, generation: int | None = None, seed: int = 0,
                    device: str | torch.device = "cpu") -> Classifier:
    """A trained generation as a ready :class:`Classifier`.

    Args:
        source: a ``model.safetensors`` this tool wrote, or a run directory.
        generation: with a run directory: which generation (default: the seed's best by validation top-1).
        seed: with a run directory: whose chain.
        device: where the model goes.

    Raises:
        CheckpointError: an unreadable file, or one that stores no model spec or preprocessing (a checkpoint
            from an older version outside its run directory: give the run directory instead).
        RunDirError: a run directory without that finished generation.
        ConfigError: a generation or seed the run does not have.
    """
    path, rd = Path(source), None
    if path.is_dir():
        rd = RunDir(path)
        if not rd.is_run():
            raise ConfigError(f"{path} is neither a model.safetensors nor a run directory (no config.yaml)")
        rd.read_config()  # verified, as every command that reads a run does
        finished = rd.finished_generations(seed) if seed in rd.seeds() else []
        if not finished:
            ready = [s for s in rd.seeds() if rd.finished_generations(s)]
            raise ConfigError(f"seed {seed} of {path} has no finished generation yet; "
                              + (f"seeds with one: {ready}" if ready else "wait until its R1 finishes"))
        if generation is None:
            generation = best_of([rd.read_summary(seed, g) for g in finished])["generation"]
        elif generation not in finished:
            raise ConfigError(f"generation {generation} of seed {seed} is not finished in {path}; finished: {finished}")
        path = rd.model_path(seed, generation)
        rd.verify_file(seed, generation, path)
    state, classes, spec, extra = load_checkpoint(path)
    if spec is None or classes is None:
        raise CheckpointError(f"{path} does not store its model spec and class names: it was not written by "
                              "labelrefinery; load it with the model class it belongs to")
    preprocessing = extra.get("preprocessing")
    if preprocessing is None:
        if rd is None and (path.parent.parent.parent / "config.yaml").is_file():
            rd = RunDir(path.parent.parent.parent)  # RUN_DIR/seed-<s>/gen-<g>/model.safetensors
        if rd is None:
            raise CheckpointError(f"{path} predates stored preprocessing; give its run directory instead (the "
                                  "preprocessing is recomputed from the run's dataset)")
        preprocessing = _run_preprocessing(rd)
    device = torch.device(device)
    model = model_from_state(state, spec_from_dict(spec, str(path)), device, str(path))
    return Classifier(model, classes, preprocessing).to(device)


def image_files(paths: list[Path]) -> list[Path]:
    """Image files among ``paths``, folders searched recursively (sorted), in the order given.

    Raises:
        DataError: a path that does not exist, or no image file at all.
    """
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            out.append(p)
        else:
            raise DataError(f"{p} does not exist; give image files or folders of images")
    if not out:
        raise DataError(f"no image files ({', '.join(IMAGE_SUFFIXES[:4])}, ...) in {', '.join(map(str, paths))}")
    return out


def read_image(path: Path, channels: int) -> torch.Tensor:
    """Decode an image file to ``(channels, H, W) uint8`` (RGB, or grayscale for 1 channel) with Pillow, 16- and
    32-bit images scaled to 8 bits (:func:`~labelrefinery.data.files.to_rgb`), as a folder dataset reads them.

    Raises:
        DataError: a file that is not a readable image (named by path).
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            if channels == 1 and not (im.mode.startswith("I") or im.mode == "F"):
                return F.pil_to_tensor(im.convert("L"))
            rgb = to_rgb(im)  # 16- and 32-bit images scaled to 8 bits as training read them, not clipped
            return rgb[:1] if channels == 1 else rgb
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"cannot read image {path}: {e}; leave it out, replace the file, or pass --skip-bad-images") from None


def predict_files(classifier: Classifier, paths: list[Path], top_k: int = 3,
                  batch_size: int = DEPLOYED_BATCH_SIZE, skip_bad_images: bool = False) -> tuple[str, list[Path]]:
    """Top-``k`` class names and probabilities of every image file in ``paths`` (folders searched), as CSV text.

    Columns: ``path``, then ``label_1``, ``p_1``, ... ``label_k``, ``p_k``, most probable first.

    Returns:
        ``(csv text, unreadable files left out)``; the list is empty unless ``skip_bad_images``.

    Raises:
        ConfigError: ``top_k`` outside 1..K.
        DataError: a missing path, no images, an unreadable image (unless ``skip_bad_images``), or none readable.
    """
    from tqdm.auto import tqdm

    k = len(classifier.classes)
    if not 1 <= top_k <= k:
        raise ConfigError(f"--top-k {top_k} must be in 1..{k} (the model's classes)")
    files = image_files(paths)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["path"] + [x for i in range(1, top_k + 1) for x in (f"label_{i}", f"p_{i}")])
    skipped: list[Path] = []
    with tqdm(total=len(files), desc="predict", unit="img", leave=False, disable=not interactive()) as bar:
        for start in range(0, len(files), batch_size):
            chunk, images = _read_chunk(classifier, files[start : start + batch_size], skip_bad_images, skipped)
            if chunk:
                p, idx = classifier.predict_proba(torch.stack(images)).topk(top_k, dim=1)
                for f, ps, ks in zip(chunk, p.tolist(), idx.tolist()):
                    writer.writerow([str(f)] + [x for pk, kk in zip(ps, ks)
                                                for x in (classifier.classes[kk], f"{pk:.4f}")])
            bar.update(min(batch_size, len(files) - start))
    if len(skipped) == len(files):
        raise DataError(f"none of the {len(files)} image files could be read (e.g. {skipped[0]})")
    return buf.getvalue(), skipped


def _read_chunk(classifier: Classifier, files: list[Path], skip: bool,
                skipped: list[Path]) -> tuple[list[Path], list[torch.Tensor]]:
    """The readable files of ``files`` and their images at the stored size; unreadable ones go to ``skipped``
    when ``skip``, else raise :class:`DataError`."""
    channels, size = int(classifier.preprocessing["channels"]), classifier.stored_size
    kept, images = [], []
    for f in files:
        try:
            image = read_image(f, channels)
        except DataError:
            if not skip:
                raise
            skipped.append(f)
            continue
        kept.append(f)
        images.append(F.center_crop(F.resize(image, [size], antialias=True), [size, size]))
    return kept, images


def predict_to(classifier: Classifier, paths: list[Path], top_k: int = 3, out: Path | None = None,
               skip_bad_images: bool = False) -> tuple[str, list[Path]]:
    """What ``refinery predict`` prints: the CSV text of :func:`predict_files` when ``out`` is None; else that
    text written to ``out`` (atomically) and the line ``"<out>: <n> image(s)"`` (newline-terminated); with the
    unreadable files left out (``skip_bad_images``).

    Raises:
        ConfigError, DataError: as :func:`predict_files`.
    """
    text, skipped = predict_files(classifier, paths, top_k, skip_bad_images=skip_bad_images)
    if out is None:
        return text, skipped
    atomic_write_text(out, text)
    n = text.count(chr(10)) - 1
    return f"{out}: {n} image{'' if n == 1 else 's'}\n", skipped


def check_output_path(source: Path, out: Path, suffix: str) -> None:
    """Refuse an ``--out`` with another suffix, or one among the files of the run ``source`` belongs to.

    Raises:
        ConfigError: ``out`` not a file path ending in ``suffix`` (outside a run), or a path the run owns.
    """
    candidates = [source, *source.parents[:3]] if source.exists() else []
    root = next((d for d in candidates if d.is_dir() and RunDir(d).is_run()), None)
    if root is None:
        if out.suffix != suffix or out.is_dir():
            raise ConfigError(f"--out {out} must be a file path ending in {suffix}")
        return
    RunDir(root).check_output_path(out, suffix)


EXPORT_FORMATS = {"torchscript": ".pt", "onnx": ".onnx", "export": ".pt2"}


def export_classifier(classifier: Classifier, out: Path, fmt: str) -> Path:
    """Write ``classifier`` (preprocessing included) for use without this package.

    Formats: ``torchscript`` (``torch.jit.trace``; load with ``torch.jit.load``), ``export``
    (``torch.export``; load with ``torch.export.load(path).module()``), ``onnx`` (needs the ``onnx`` and
    ``onnxscript`` packages). The exported model takes ``(N, C, S, S)`` float images in [0, 1] at the stored
    size S (any N; resize other images to S x S first: the traced model does not) and returns logits. Every
    format carries the class names (in logit order) and the preprocessing as JSON: TorchScript and
    ``torch.export`` as the extra files ``classes.json`` and ``preprocessing.json`` (``torch.jit.load(path,
    _extra_files=...)``, ``torch.export.load(path, extra_files=...)``), ONNX as the metadata properties
    ``classes`` and ``preprocessing`` (``onnx.load(path).metadata_props``).

    Raises:
        ConfigError: an unknown format, or ``onnx`` without its packages (the message says what to install).
    """
    if fmt not in EXPORT_FORMATS:
        raise ConfigError(f"--format {fmt!r} is not one of {', '.join(EXPORT_FORMATS)}")
    c, s = int(classifier.preprocessing["channels"]), classifier.stored_size
    example = torch.rand(2, c, s, s, device=classifier.mean.device)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.tmp{out.suffix}")  # torch.export wants the .pt2 suffix
    facts = export_facts(classifier)
    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # deprecated upstream in favour of torch.export
            warnings.simplefilter("ignore", torch.jit.TracerWarning)  # the size check is constant for S x S input
            torch.jit.trace(classifier, example).save(str(tmp), _extra_files=facts)
    elif fmt == "export":
        batch = torch.export.Dim("batch", min=1)
        program = torch.export.export(classifier, (example,), dynamic_shapes={"images": {0: batch}})
        torch.export.save(program, str(tmp), extra_files=facts)
    else:
        try:
            import onnx
            import onnxscript  # noqa: F401
        except ImportError:
            raise ConfigError("--format onnx needs the onnx exporter: pip install onnx onnxscript") from None
        torch.onnx.export(classifier, (example,), str(tmp), input_names=["images"], output_names=["logits"],
                          dynamic_shapes={"images": {0: torch.export.Dim("batch", min=1)}})
        model = onnx.load(str(tmp))
        for key, value in facts.items():
            model.metadata_props.add(key=key.removesuffix(".json"), value=value)
        onnx.save(model, str(tmp))
    tmp.replace(out)
    return out


def export_facts(classifier: Classifier) -> dict[str, str]:
    """What every export carries beside the weights, as JSON text by file name: ``classes.json`` (the K class
    names in logit order) and ``preprocessing.json`` (mean, std, channels, stored size, augmentation)."""
    return {"classes.json": json.dumps(classifier.classes), "preprocessing.json": json.dumps(classifier.preprocessing)}


def export_with_summary(classifier: Classifier, out: Path, fmt: str) -> str:
    """:func:`export_classifier`, then the line ``refinery export`` prints: the file written, its format, input
    shape and the first class names."""
    path = export_classifier(classifier, out, fmt)
    return (f"wrote {path} ({fmt}; input (N, {classifier.preprocessing['channels']}, {classifier.stored_size}, "
            f"{classifier.stored_size}) float in [0, 1], output logits over " + ", ".join(classifier.classes[:4])
            + (", ..." if len(classifier.classes) > 4 else "") + ")")
