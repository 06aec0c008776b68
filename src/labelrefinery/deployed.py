"""A trained model with its preprocessing, as users run it: :class:`Classifier`, and the top-1 it scores.

Every number a run records about a saved model (validation and test top-1 in
``summary.json``, ``refinery evaluate``'s table and ensembles) comes from
:func:`deployed_top1`: the saved weights through :class:`Classifier`, in fp32,
in batches of :data:`DEPLOYED_BATCH_SIZE`, which is what
:func:`labelrefinery.classifier.load_classifier`, ``refinery predict`` and the
exports run. Training may evaluate each epoch in bf16 to choose its best epoch;
the recorded figures are the ones a user of the saved model gets.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.transforms.v2 import functional as F  # imported here: torch.jit.trace cannot import it

from .augment import eval_view
from .data.files import ImageFiles, read_batches
from .dist import all_reduce_sum, shard

DEPLOYED_BATCH_SIZE = 256  # images per forward pass wherever a saved model is scored or used
DEPLOYED_PRECISION = "fp32"  # recorded in run.json as how the saved models were scored


class Classifier(nn.Module):
    """A trained model with its preprocessing: images in, logits out.

    ``forward(images)``: ``images`` ``(N, C, H, W)``, uint8 (0-255) or floating point in [0, 1] (not
    normalised), C the model's channels; images whose side is not the stored size are resized (shorter side,
    antialiased) and centre-cropped to it, as the dataset's images were; then the evaluation view of the
    training augmentation (e.g. the centre 224/256 for ``crop``) and the normalisation are applied. Returns
    ``(N, K) float32`` logits. Put in eval mode on construction.

    Attributes:
        model: the network itself (expects normalised input).
        classes: the K class names, in logit order.
        preprocessing: the dict stored in the checkpoint.
    """

    def __init__(self, model: nn.Module, classes: list[str], preprocessing: dict):
        super().__init__()
        self.model, self.classes, self.preprocessing = model, list(classes), dict(preprocessing)
        c = int(preprocessing["channels"])
        self.register_buffer("mean", torch.tensor(preprocessing["mean"], dtype=torch.float32).view(1, c, 1, 1))
        self.register_buffer("std", torch.tensor(preprocessing["std"], dtype=torch.float32).view(1, c, 1, 1))
        self.stored_size = int(preprocessing["stored_size"])
        self._view = eval_view(preprocessing.get("augment", "none"))
        self.eval()

    def prepare(self, images: torch.Tensor, checked: bool = False) -> torch.Tensor:
        """``(N, C, H, W)`` uint8 or [0, 1] float -> the normalised model input (see the class docstring).

        Raises:
            ValueError: not 4-D, the wrong number of channels, a non-float, non-uint8 dtype, or float values
                outside [0, 1] (e.g. 0-255 floats: pass uint8, or divide by 255); not checked again when
                ``checked`` (the caller did).
        """
        if not checked:
            self.check_input(images)
        if images.dtype == torch.uint8:
            x = images.to(self.mean.device).float().div(255)
        else:
            x = images.to(self.mean.device, torch.float32)
        if tuple(x.shape[-2:]) != (self.stored_size, self.stored_size):
            x = F.center_crop(F.resize(x, [self.stored_size], antialias=True), [self.stored_size, self.stored_size])
        if self._view is not None:
            x = self._view(x)
        return (x - self.mean) / self.std

    def check_input(self, images: torch.Tensor) -> None:
        """Raise ValueError unless ``images`` is ``(N, C, H, W)`` uint8, or floating point in [0, 1]."""
        if torch.jit.is_tracing() or torch.compiler.is_compiling():
            return  # shapes and values are symbolic here; export documents its input
        c = self.mean.shape[1]
        if images.dim() != 4 or images.shape[1] != c:
            raise ValueError(f"expected images of shape (N, {c}, H, W), got {tuple(images.shape)}")
        if images.dtype != torch.uint8 and not images.is_floating_point():
            raise ValueError(f"expected uint8 or floating-point images in [0, 1], got {images.dtype}")
        if images.is_floating_point() and images.numel() and (images.min() < 0 or images.max() > 1):
            raise ValueError(f"floating-point images must be in [0, 1], got values in [{float(images.min()):.3g}, "
                             f"{float(images.max()):.3g}]; pass uint8 images or divide by 255")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(self.prepare(images)).float()

    @torch.inference_mode()
    def predict_proba(self, images: "torch.Tensor | ImageFiles", batch_size: int = DEPLOYED_BATCH_SIZE) -> torch.Tensor:
        """Softmax ``(N, K) float32`` on the CPU, in fp32, in batches of ``batch_size`` images.

        ``images``: a tensor (see :meth:`prepare`) or a dataset's :class:`~labelrefinery.data.files.ImageFiles`
        (decoded batch by batch). A run scores its saved models this way (:func:`deployed_top1`), so the top-1 it
        records is the one this method gives.

        Raises:
            ValueError: see :meth:`prepare`.
            DataError: an image file that cannot be decoded.
        """
        self.eval()
        tensor = isinstance(images, torch.Tensor)
        if tensor:
            self.check_input(images)
        batches = [torch.arange(i, min(i + batch_size, len(images))) for i in range(0, len(images), batch_size)]
        out = []
        for raw in read_batches(images, batches):
            if not tensor:
                self.check_input(raw)
            with torch.autocast(raw.device.type, enabled=False):
                out.append(self.model(self.prepare(raw, checked=True)).float().softmax(1).cpu())
        return torch.cat(out) if out else torch.empty(0, len(self.classes))


def deployed_top1(classifier: Classifier, images: "torch.Tensor | ImageFiles", labels: torch.Tensor) -> float:
    """Top-1 accuracy (%) of ``classifier`` on ``images`` (``(N, C, H, W) uint8`` or files) against ``labels:
    (N,) int64``, exactly as :meth:`Classifier.predict_proba` predicts them (a tie goes to the lower class index,
    as ``argmax`` does). 0.0 for no images. Under torchrun each process scores its contiguous share
    (:func:`~labelrefinery.dist.shard`) and the counts of correct images are summed."""
    if not len(labels):
        return 0.0
    start, end = shard(len(labels))
    top = classifier.predict_proba(images[start:end]).argmax(1)
    correct = torch.tensor([int((top == labels[start:end].cpu()).sum())], dtype=torch.float64,
                           device=classifier.mean.device)
    return 100.0 * int(all_reduce_sum(correct).item()) / len(labels)
