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


def format_duration(seconds: float) -> str:
    """``seconds`` as ``1h02m``, ``4m05s`` or ``12s``."""
    s = max(0, round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


class ChainClock:
    """The epochs a whole run still has to train (every seed, generation and control), for its ETA.

    The estimate is the mean seconds per epoch measured in this process (training plus the validation after
    it) times the epochs left; relabelling and test evaluation between generations are not counted, and early
    stopping only shortens the run (its skipped epochs are dropped when a fit ends).

    Args:
        epochs_left: epochs planned and not yet trained, over the whole run.
    """

    def __init__(self, epochs_left: int):
        self.epochs_left = max(0, int(epochs_left))
        self.epochs_done = 0
        self.seconds = 0.0

    def epoch_done(self, seconds: float) -> None:
        """One epoch finished in ``seconds`` (training plus validation)."""
        self.epochs_done += 1
        self.seconds += seconds
        self.epochs_left = max(0, self.epochs_left - 1)

    def skip(self, epochs: int) -> None:
        """``epochs`` planned epochs will not run (early stopping)."""
        self.epochs_left = max(0, self.epochs_left - max(0, epochs))

    def eta_s(self) -> float | None:
        """Seconds until the run's last epoch ends, or None before the first epoch of this process."""
        return self.seconds / self.epochs_done * self.epochs_left if self.epochs_done else None

    def eta_text(self) -> str:
        """``chain ETA 4m05s`` (``chain ETA ?`` before the first epoch)."""
        eta = self.eta_s()
        return "chain ETA " + ("?" if eta is None else format_duration(eta))
