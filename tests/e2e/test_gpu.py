"""CUDA path: the same code with the data on the GPU. Skipped where torch sees no CUDA device."""

import pytest
import torch

from labelrefinery.batch import Pipeline
from labelrefinery.config import resolve_config
from labelrefinery.data import load_digits
from labelrefinery.device import resolve_precision
from labelrefinery.engine import TrainData, TrainSetup, fit
from labelrefinery.inference import predict
from labelrefinery.models import ModelSpec, build_model
from labelrefinery.targets import StoredTargets

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_fit_and_predict_on_cuda_match_cpu_weights():
    ds = load_digits()
    cuda = torch.device("cuda")
    p = Pipeline.create(cuda, ds.mean, ds.std, resolve_precision("auto", cuda))
    cfg = resolve_config("quick", {"epochs": 3, "batch_size": 128}).training
    torch.manual_seed(0)
    model = build_model(ModelSpec("convnet", 10, 1, 8)).to(cuda).to(memory_format=torch.channels_last)
    res = fit(model, TrainData(ds.train.images.to(cuda), StoredTargets(ds.train.labels.to(cuda)), ds.test.images,
                               ds.test.labels), TrainSetup(cfg, p, (0, 1)))
    assert res.best_val_top1 > 80
    logits = predict(model, ds.test.images, p)
    assert logits.device.type == "cpu" and logits.dtype == torch.float32
    cpu = Pipeline.create(torch.device("cpu"), ds.mean, ds.std, None)
    cpu_logits = predict(model.cpu().float(), ds.test.images, cpu)
    assert (logits.argmax(1) == cpu_logits.argmax(1)).float().mean() > 0.97
