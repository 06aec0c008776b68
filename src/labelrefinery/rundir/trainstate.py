"""A generation's epoch-level resume point, ``train-state.pt``, with its own checksum."""

from __future__ import annotations

import io
from pathlib import Path

import torch

from ..errors import RunDirError
from ..fileio import sha256_bytes
from .writer import main_process_writes, write_bytes

_STATE_TRAILER = b"LRSHA256"  # train-state.pt ends with this tag and the SHA-256 of what precedes it


class TrainStateFile:
    """A generation's epoch-level resume point (``train-state.pt``, loaded with ``weights_only=True``).

    The file is ``torch.save`` output followed by ``LRSHA256`` and the SHA-256 of
    that output, so a truncated or garbled file is refused instead of resumed.
    """

    def __init__(self, path: Path, generation_dir: str = "", writer: bool = True):
        self.path = Path(path)
        self._where = generation_dir or str(self.path.parent)
        self.writer = writer

    def _damaged(self, what: str) -> RunDirError:
        return RunDirError(f"{self.path} is damaged ({what}); delete it to restart {self._where} from its first "
                           "epoch")

    def load(self, device: torch.device | str = "cpu") -> dict | None:
        """The saved training state (tensors and numbers only), or None when there is none.

        Raises:
            RunDirError: a damaged file (the message says to delete it).
        """
        if not self.path.exists():
            return None
        raw = self.path.read_bytes()
        tail = len(_STATE_TRAILER) + 32
        if len(raw) > tail and raw[-tail:-32] == _STATE_TRAILER:
            body = raw[:-tail]
            if sha256_bytes(body) != raw[-32:].hex():
                raise self._damaged("its checksum does not match")
        else:
            body = raw  # written before checksums were added
        try:
            state = torch.load(io.BytesIO(body), map_location=device, weights_only=True)
        except Exception as e:  # any way a damaged zip or pickle stream fails
            raise self._damaged(f"{type(e).__name__}") from None
        need = {"model", "optimizer", "scheduler", "best_model", "best_top1", "best_epoch", "since_best", "epoch"}
        if not isinstance(state, dict) or not need <= set(state):
            raise self._damaged("keys missing")
        return state

    def last_epoch(self) -> int | None:
        """The 0-based epoch the state was saved after, or None."""
        state = self.load()
        return None if state is None else int(state["epoch"])

    @main_process_writes()
    def save(self, state: dict) -> None:
        """Write ``state`` (a dict of tensors, state dicts and numbers) atomically, with its checksum."""
        buf = io.BytesIO()
        torch.save(state, buf)
        body = buf.getvalue()
        write_bytes(self.path, body + _STATE_TRAILER + bytes.fromhex(sha256_bytes(body)))

    @main_process_writes()
    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
