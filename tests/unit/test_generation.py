"""One generation: planned epochs, cross-fitting, what the next generation fits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from labelrefinery.cli import main
from labelrefinery.config import resolve_config
from labelrefinery.protocol import seed_data
from labelrefinery.rundir import RunDir
from labelrefinery.targets import StoredTargets


def test_planned_epochs_counts_what_is_left(tmp_path):
    from labelrefinery.config import resolve_config
    from labelrefinery.generation import planned_epochs
    from labelrefinery.rundir import RunDir

    cfg = resolve_config("quick", {"dataset": "digits", "epochs": 3, "generations": 2, "seeds": 2, "controls": True})
    rd = RunDir(tmp_path / "r")
    assert planned_epochs(cfg, rd) == 2 * (3 + 3 + 3 + 3 * 2)  # per seed: R1, R2, label smoothing, equal compute
    (tmp_path / "r/seed-0/gen-1").mkdir(parents=True)
    (tmp_path / "r/seed-0/gen-1/summary.json").write_text("{}")
    assert planned_epochs(cfg, rd) == 2 * 15 - 3


@pytest.mark.slow
def test_cross_fit_never_labels_an_image_with_a_model_that_trained_on_it(monkeypatch):
    import labelrefinery.generation as generation
    from labelrefinery.chain import prepare

    cfg = resolve_config("quick", {"dataset": "digits", "epochs": 1, "batch_size": 64, "cross_fit": 3,
                                   "augment": "static", "static_copies": 1, "progress": False})
    from labelrefinery.augment import static_copies

    exp = prepare(cfg, RunDir("/nonexistent/never-made"))
    data = seed_data(exp.dataset, cfg, 0, torch.device("cpu"), static_copies=static_copies)
    trained_on, labelled = [], []
    real_predict = generation.predict

    class Recording:
        def __init__(self, inner):
            self.inner = inner

        def subset(self, positions):
            trained_on.append(set(data.views.indices[positions].tolist()))
            return self.inner.subset(positions)

    def predict(model, images, pipeline, *a, **k):
        labelled.append(len(images))
        return real_predict(model, images, pipeline, *a, **k)

    monkeypatch.setattr(generation, "predict", predict)
    targets = Recording(StoredTargets(data.ground_truth, num_classes=10))
    refined = generation.cross_fit_labels(exp, data, 1, targets)
    assert refined.shape == (len(data.views.indices), 10) and torch.allclose(refined.sum(1), torch.ones(len(refined)))
    assert len(trained_on) == 3 and sum(labelled) == len(data.views.indices)
    everything = set(data.views.indices.tolist())
    held = [everything - t for t in trained_on]
    assert set().union(*held) == everything  # every image is labelled ...
    assert sum(len(h) for h in held) == len(everything)  # ... by exactly one fold model, which never saw it
    # stratified: every fold holds every class in about the same share
    given = dict(zip(data.views.indices.tolist(), data.views.labels.tolist()))
    for h in held:
        counts = np.bincount([given[i] for i in h], minlength=10)
        assert counts.min() > 0.25 * counts.mean()


@pytest.mark.parametrize("storage", ["float16", "topk:3"])
def test_the_next_generation_fits_exactly_the_stored_rows(tmp_path, monkeypatch, storage):
    import labelrefinery.generation as generation

    fitted = []

    class Spy(generation.StoredTargets):
        def __init__(self, rows, *args, **kwargs):
            fitted.append(rows.clone())
            super().__init__(rows, *args, **kwargs)

    monkeypatch.setattr(generation, "StoredTargets", Spy)
    assert main(["run", "--dataset", "digits", "--model", "convnet", "--epochs", "1", "--generations", "2",
                 "--label-storage", storage, "--gt-weight", "0", "--no-progress", "--threads", "1",
                 "--runs-dir", str(tmp_path)]) == 0  # the refined rows alone (the quick preset mixes in 0.3 GT)
    run = next(tmp_path.iterdir())
    stored = RunDir(run).load_labels(0, 1)["labels"]
    assert len(fitted) == 2 and fitted[0].ndim == 1  # R1 fits the given labels, R2 the refined rows
    np.testing.assert_array_equal(fitted[1].numpy(), stored)
