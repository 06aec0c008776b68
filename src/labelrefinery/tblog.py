"""TensorBoard scalars of a run (``--tensorboard``): one event directory per seed, ``RUN_DIR/tb/seed-<s>/``.

Per epoch, under ``R<g>/`` (or ``control-<name>/``): ``train_loss``, ``train_kl`` (nats), ``train_top1``,
``val_top1`` (%), ``val_loss``, ``lr``, ``images_per_s``, at step = epoch (1-based). Per generation, under
``generation/``: ``test_top1``, ``val_top1`` (%), ``refined_label_entropy`` (nats),
``refined_label_agreement`` (%) at step = generation; controls under ``control/<name>/``. Watch a run with
``tensorboard --logdir RUN_DIR/tb``. TensorBoard is an optional extra (``pip install tensorboard``).
"""

from __future__ import annotations

from pathlib import Path

from .errors import ConfigError

EPOCH_SCALARS = ("train_loss", "train_kl", "train_top1", "val_top1", "val_loss", "lr", "lr_peak", "images_per_s")
GENERATION_SCALARS = ("test_top1", "val_top1", "refined_label_entropy", "refined_label_agreement")


def check_tensorboard() -> None:
    """Raise :class:`ConfigError` naming the install command when TensorBoard cannot be imported."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        raise ConfigError("--tensorboard needs the tensorboard package: pip install tensorboard (or "
                          "'labelrefinery[tensorboard]'), or leave --tensorboard out") from None


class TensorBoardLog:
    """Writes the metrics records of ``metrics.jsonl`` as TensorBoard scalars under ``root``."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self._writers: dict[int, object] = {}

    def _writer(self, seed: int):
        if seed not in self._writers:
            from torch.utils.tensorboard import SummaryWriter

            self._writers[seed] = SummaryWriter(log_dir=str(self.root / f"seed-{seed}"))
        return self._writers[seed]

    def record(self, record: dict) -> None:
        """One ``metrics.jsonl`` record: ``kind`` ``epoch`` or ``generation``, with ``seed`` and ``generation``
        (an int, or a control's name)."""
        g, writer = record.get("generation"), self._writer(int(record["seed"]))
        if record.get("kind") == "epoch":
            prefix = f"R{g}" if isinstance(g, int) else f"control-{g}"
            for key in EPOCH_SCALARS:
                if isinstance(record.get(key), (int, float)):
                    writer.add_scalar(f"{prefix}/{key}", record[key], int(record["epoch"]))
        elif record.get("kind") == "generation":
            prefix, step = ("generation", g) if isinstance(g, int) else (f"control/{g}", 1)
            for key in GENERATION_SCALARS:
                if isinstance(record.get(key), (int, float)):
                    writer.add_scalar(f"{prefix}/{key}", record[key], step)
        writer.flush()

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()
