"""Prediction and BatchNorm recalibration."""

import torch

from labelrefinery.batch import Pipeline
from labelrefinery.engine import EpochSteps, TrainData, train_one_epoch
from labelrefinery.inference import evaluate, predict, recalibrate_batchnorm
from labelrefinery.models import ModelSpec, build_model
from labelrefinery.targets import StoredTargets


def test_recalibrate_batchnorm_restores_confidence(digits):
    ds = digits
    p = Pipeline.create(torch.device("cpu"), ds.mean, ds.std, None)
    torch.manual_seed(0)
    model = build_model(ModelSpec("convnet", 10, 1, 8))
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    for e in range(3):  # few steps: running statistics lag behind
        train_one_epoch(model, opt, TrainData(ds.train.images, StoredTargets(ds.train.labels)), p,
                        EpochSteps(256, torch.Generator().manual_seed(e)))
    entropy = lambda l: float(-(torch.xlogy(l.softmax(1), l.softmax(1))).sum(1).mean())  # noqa: E731
    before = predict(model, ds.train.images, p)
    weights = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k}
    recalibrate_batchnorm(model, ds.train.images, p)
    after = predict(model, ds.train.images, p)
    assert entropy(after) < entropy(before) - 0.3
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in weights.items())
    assert evaluate(model, ds.test.images, ds.test.labels, p)["top1"] > 85
