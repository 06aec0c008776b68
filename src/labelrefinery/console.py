"""What a run prints: one-line messages and progress bars on stderr, from the main process only."""

from __future__ import annotations

import sys

from tqdm.auto import tqdm

from .dist import is_main_process


def log(msg: str) -> None:
    """Print one line to stderr (shared with the progress bars); silent on every process but rank 0."""
    if is_main_process():
        tqdm.write(msg, file=sys.stderr)


def interactive() -> bool:
    """True when stderr is a terminal: bars are redrawn there; a log file gets plain lines instead."""
    return sys.stderr.isatty()


def progress_bar(total: int, desc: str, enabled: bool) -> tqdm:
    """A tqdm bar over ``total`` images on stderr; disabled unless ``enabled``, on rank 0 and on a terminal
    (a redirected log would fill with redrawn bars)."""
    return tqdm(total=total, desc=desc, unit="img", leave=False,
                disable=not (enabled and is_main_process() and interactive()), dynamic_ncols=True)
