"""A run's ``metrics.jsonl``: one JSON line per epoch and per generation, appended whole."""

from __future__ import annotations

import json

from ..console import log
from .layout import RunLayout
from .writer import append_line, write_text


class MetricsLog:
    """The metrics records of the run directory laid out by ``layout``."""

    def __init__(self, layout: RunLayout):
        self.layout = layout
        self.path = layout.metrics_path

    def append(self, record: dict) -> None:
        """Append one JSON line (one write call, flushed to disk)."""
        append_line(self.path, (json.dumps(record) + "\n").encode("utf-8"))

    def read(self) -> list[dict]:
        """Every complete record ([] when there is none).

        It feeds only the training curves (no number of a summary or table): a damaged line is skipped with a
        one-line warning naming the file and the lines, except a partial last line left by a killed append,
        which is skipped silently; a missing file of a run with finished work gets a warning too.
        """
        if not self.path.exists():
            if self.layout.has_finished_work():
                log(f"warning: {self.path} is missing; the training curves of the finished generations "
                    "are not shown")
            return []
        records, damaged = [], []
        lines = self.path.read_text(errors="replace").splitlines()
        for number, line in enumerate(lines, 1):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                record = None
            if isinstance(record, dict):
                records.append(record)
            elif number < len(lines) or isinstance(record, (list, int, float, str)):
                damaged.append(number)  # a partial last line is a killed append's; anything else is damage
        if damaged:
            shown = ", ".join(map(str, damaged[:5])) + (f" and {len(damaged) - 5} more" if len(damaged) > 5 else "")
            log(f"warning: {self.path} line{'s' if len(damaged) > 1 else ''} {shown} "
                f"{'are' if len(damaged) > 1 else 'is'} damaged and skipped; the training curves lack "
                f"{'those epochs' if len(damaged) > 1 else 'that epoch'}")
        self._check_complete(records)
        return records

    def _check_complete(self, records: list[dict]) -> None:
        """Warn when fewer generations are recorded than finished (the file was cut or edited)."""
        finished = len(self.layout.summary_paths())
        recorded = len({(r.get("seed"), r.get("generation")) for r in records if r.get("kind") == "generation"})
        if recorded < finished:
            log(f"warning: {self.path} lacks the records of {finished - recorded} finished generation"
                f"{'s' if finished - recorded > 1 else ''} (cut or edited); the training curves are incomplete")

    def drop(self, seed: int, generation: int | str, after_epoch: int) -> None:
        """Remove a restarted generation's records of epochs after ``after_epoch`` (1-based) and its summary."""
        records = self.read()
        kept = [r for r in records if not (r.get("seed") == seed and r.get("generation") == generation
                                           and (r.get("kind") == "generation" or r.get("epoch", 0) > after_epoch))]
        if len(kept) != len(records):
            write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
