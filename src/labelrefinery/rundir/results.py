"""The run's sealed JSON records: a generation's ``summary.json``, ``run.json``, ``ensemble.json`` and an external
refinery's ``seed-<s>/refinery/summary.json``."""

from __future__ import annotations

import json
from pathlib import Path

from ..console import log
from ..errors import RunDirError
from ..fileio import seal, seal_broken
from .integrity import _summary_problem, any_seal_broken, ensembles_ok, external_summary_ok
from .writer import write_json


def read_summary_file(path: Path, seed: int, generation: int | str, fix: str) -> dict:
    """The summary of generation (or control) ``generation`` of ``seed`` at ``path``, checked for its seal, keys
    and value types (its run id is checked apart).

    Raises:
        RunDirError: a damaged or edited file (the message ends in ``fix``: what to delete).
    """
    try:
        summary = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RunDirError(f"{path} is damaged ({type(e).__name__}); {fix}") from None
    if isinstance(summary, dict) and seal_broken(summary):
        raise RunDirError(f"{path} was edited or is damaged (its sha256 does not match its content); restore the "
                          f"file the run wrote, or {fix}")
    problem = _summary_problem(summary, seed, generation)
    if problem:
        raise RunDirError(f"{path} is damaged ({problem}); {fix}")
    return summary


def read_run_info_file(path: Path) -> dict:
    """``run.json`` (versions, device, precision, CPU, dataset facts), or {} when it is missing or unreadable,
    with a one-line warning naming the file (it describes the run and feeds no computation)."""
    try:
        info = json.loads(path.read_text())
    except FileNotFoundError:
        log(f"warning: {path} is missing; the run's facts (versions, device, precision) are not shown")
        return {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        log(f"warning: {path} is damaged ({type(e).__name__}); the run's facts (versions, device, precision) "
            "are not shown; `refinery run --resume` on this directory writes it again")
        return {}
    if not isinstance(info, dict) or seal_broken(info):
        what = "not a JSON object" if not isinstance(info, dict) else "its sha256 does not match its content"
        log(f"warning: {path} is damaged or was edited ({what}); the run's facts (versions, device, "
            "precision) are not shown; `refinery run --resume` on this directory writes it again")
        return {}
    return info


def read_ensemble_file(path: Path) -> list[dict]:
    """The entries of ``ensemble.json`` at ``path`` ([] when there is none).

    Raises:
        RunDirError: a damaged file.
    """
    if not path.exists():
        return []
    fix = "delete it; `refinery evaluate RUN_DIR --ensemble G,G` makes it again"
    try:
        entries = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RunDirError(f"{path} is damaged ({type(e).__name__}); {fix}") from None
    if not ensembles_ok(entries):
        raise RunDirError(f"{path} is damaged (unexpected content); {fix}")
    if any_seal_broken(entries):
        raise RunDirError(f"{path} was edited or is damaged (an entry's sha256 does not match its content); {fix}")
    return entries


def add_ensemble_entry(path: Path, entry: dict) -> None:
    """Add ``entry`` to ``ensemble.json`` at ``path``, replacing one for the same generations."""
    entries = [e for e in read_ensemble_file(path) if e["generations"] != entry["generations"]]
    write_json(path, entries + [seal(entry)])


def read_external_summary(where: Path) -> dict | None:
    """The external refinery's ``summary.json`` in ``where`` (``seed-<s>/refinery``), or None (none there, or
    unreadable).

    Raises:
        RunDirError: a summary that was edited or is damaged.
    """
    try:
        summary = json.loads((where / "summary.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    ok = external_summary_ok(summary)
    if ok and seal_broken(summary):
        raise RunDirError(f"{where / 'summary.json'} was edited or is damaged (its sha256 does not "
                          f"match its content); delete {where} and rerun to label the images with the refinery again")
    return summary if ok else None
