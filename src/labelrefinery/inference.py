"""Inference of the training engine: ``predict``, ``evaluate``, ``recalibrate_batchnorm``, ``top1_accuracy``.

Letters: N images, C channels, H x W pixels, K classes. Images are ``(N, C, H, W) uint8``, read through a
:class:`~labelrefinery.batch.Pipeline` (device, normalisation, evaluation view, precision).
"""

from __future__ import annotations

import torch
from torch import nn

from .batch import Pipeline
from .dist import all_reduce_sum, broadcast_buffers, gather_rows, process_info, shard
from .losses import soft_target_cross_entropy

RECALIBRATION_IMAGES = 4096  # each epoch's BatchNorm statistics use every (N // 4096)-th training image


def prediction_batch_size(device: torch.device) -> int:
    """Images per forward pass of :func:`predict`: 128 on a CPU, 1024 elsewhere.

    On a CPU a batch of 128 keeps its activations in cache, which larger batches do not (the speeds by batch
    size: ``benchmarks/predict_batch.py``, BENCHMARKS.md).
    """
    return 128 if device.type == "cpu" else 1024


def predict(model: nn.Module, images: torch.Tensor, pipeline: Pipeline, batch_size: int | None = None) -> torch.Tensor:
    """Logits of ``model`` on ``images`` in dataset order, through ``pipeline.eval_view``.

    Args:
        model: classifier; put in eval mode here (and left so).
        images: ``(N, C, H, W) uint8`` on any device.
        pipeline: device, normalisation, evaluation view and precision.
        batch_size: images per forward pass (None: :func:`prediction_batch_size`).

    Returns:
        ``(N, K) float32`` logits on the CPU, in dataset order. Under torchrun each process predicts its
        contiguous share (:func:`~labelrefinery.dist.shard`) and the shares are gathered back
        (:func:`~labelrefinery.dist.gather_rows`): one row per image, no padding, equal on every process.
    """
    model.eval()
    batch_size = batch_size or prediction_batch_size(pipeline.device)
    start, end = shard(len(images))  # with several processes each predicts its share; gathered in order below
    out = []
    with torch.inference_mode():
        for x in pipeline.eval_batches(images[start:end], batch_size):
            with pipeline.autocast():
                logits = model(x)
            out.append(logits.float().cpu())
    local = torch.cat(out) if out else torch.empty(0, 0)
    if process_info().world_size > 1:  # gathered where the processes talk: the CPU (gloo) or the GPU (NCCL)
        local = gather_rows(_with_width(local, model, images, pipeline).to(pipeline.device), len(images)).cpu()
    return local


def final_linear(model: nn.Module, num_classes: int) -> nn.Linear | None:
    """The model's classifier layer: its last ``nn.Linear`` (in registration order) with ``num_classes`` outputs, or
    None. Whether the logits are its outputs is checked by :func:`predict_features`."""
    found = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == num_classes]
    return found[-1] if found else None


def predict_features(model: nn.Module, images: torch.Tensor, pipeline: Pipeline,
                     num_classes: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logits and penultimate features of ``model`` on ``images`` in one pass: ``((N, K) float32 logits as
    :func:`predict` gives them, (N, D) float32 features)``, the features being what its classifier layer
    (:func:`final_linear`) takes, on the CPU in dataset order (gathered from every process as :func:`predict`
    does); features None when the model has no such layer or its logits are not that layer's outputs (checked on
    every batch)."""
    layer = final_linear(model, num_classes)
    if layer is None:
        return predict(model, images, pipeline), None
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    handle = layer.register_forward_hook(lambda _m, inp, out: seen.append((inp[0].detach(), out.detach())))
    model.eval()
    start, end = shard(len(images))
    feats, outs, matches = [], [], True
    try:
        with torch.inference_mode():
            for x in pipeline.eval_batches(images[start:end], prediction_batch_size(pipeline.device)):
                seen.clear()
                with pipeline.autocast():
                    logits = model(x)
                outs.append(logits.float().cpu())
                if len(seen) != 1 or seen[0][1].shape != logits.shape or not torch.equal(seen[0][1], logits):
                    matches = False
                if matches:
                    feats.append(seen[0][0].float().flatten(1).cpu())
    finally:
        handle.remove()
    local = torch.cat(outs) if outs else torch.empty(0, num_classes)
    local_feats = torch.cat(feats) if feats else torch.empty(0, layer.in_features)
    matches = _all_agree(matches, pipeline)
    if process_info().world_size > 1:
        local = gather_rows(local.to(pipeline.device), len(images)).cpu()
        if matches:
            local_feats = gather_rows(local_feats.to(pipeline.device), len(images)).cpu()
    return local, local_feats if matches else None


def _all_agree(flag: bool, pipeline: Pipeline) -> bool:
    """Whether ``flag`` holds on every process (itself in a single process)."""
    if process_info().world_size == 1:
        return flag
    return bool(all_reduce_sum(torch.tensor([0.0 if flag else 1.0], device=pipeline.device)).item() == 0)


def _with_width(local: torch.Tensor, model: nn.Module, images, pipeline: Pipeline) -> torch.Tensor:
    """``local`` logits, or for an empty shard a ``(0, K)`` tensor with the model's K (every process gathers
    the same width)."""
    if len(local):
        return local
    return torch.empty(0, predict_width(model, images, pipeline))


def predict_width(model: nn.Module, images, pipeline: Pipeline) -> int:
    """K, the number of logits ``model`` gives (one image run through it)."""
    with torch.inference_mode(), pipeline.autocast():
        return int(model(next(pipeline.eval_batches(images[:2], 2))).shape[1])


def recalibrate_batchnorm(model: nn.Module, images: torch.Tensor, pipeline: Pipeline, batch_size: int = 1024) -> None:
    """Recompute every BatchNorm layer's running mean and variance over ``images`` (precise BatchNorm).

    With few training steps the running statistics (an exponential average with
    momentum 0.1) lag far behind the weights, so the model is badly calibrated in
    eval mode: its softmax is nearly uniform and refined labels made from it
    carry little signal, which makes later generations collapse. One pass in
    train mode without gradients, averaging over all batches
    (``torch.optim.swa_utils.update_bn``; Wu & Johnson 2021, "Rethinking 'Batch'
    in BatchNorm", the "precise BN" statistics), fixes the statistics. Weights are unchanged. Under torchrun
    every process runs the same pass (the subset is a few thousand images) and then takes rank 0's statistics,
    so all hold identical ones and make identical refined labels.

    Args:
        model: trained in place (its BatchNorm buffers only); left in eval mode.
        images: ``(N, C, H, W) uint8`` training images, un-augmented.
        pipeline: device, normalisation, precision.
        batch_size: images per forward pass.
    """
    from torch.optim.swa_utils import update_bn

    with torch.no_grad(), pipeline.autocast():
        update_bn(pipeline.eval_batches(images, batch_size), model)
    broadcast_buffers(model)  # with several processes: every process holds rank 0's statistics
    model.eval()


def recalibration_subset(images: torch.Tensor) -> torch.Tensor:
    """Every ``(N // RECALIBRATION_IMAGES)``-th of ``images: (N, C, H, W)``: all N below 8,192, else 4,096-8,191.

    Precise-BatchNorm statistics (Wu & Johnson 2021) need a few thousand images, not the whole set (the
    subset against every image: ``benchmarks/step_settings.py --recalibration``, BENCHMARKS.md).
    """
    return images[:: max(1, len(images) // RECALIBRATION_IMAGES)]


def top1_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy in percent of ``logits: (N, K)`` (or probabilities) against ``labels: (N,) int64``:
    ``100 * correct / N`` exactly (no float32 rounding of the share)."""
    if len(labels) == 0:
        return float("nan")
    return 100.0 * int((logits.argmax(1).cpu() == labels.cpu()).sum()) / len(labels)


def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, pipeline: Pipeline,
             batch_size: int | None = None) -> dict[str, float]:
    """``{"top1": %, "loss": mean cross-entropy in nats}`` of ``model`` on ``(N, C, H, W) uint8`` images
    against ``labels: (N,) int64``."""
    logits = predict(model, images, pipeline, batch_size)
    return {
        "top1": top1_accuracy(logits, labels),
        "loss": soft_target_cross_entropy(logits, labels.cpu()).item(),
    }
