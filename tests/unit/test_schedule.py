"""Learning-rate schedules and progressive resizing (``schedule``)."""

import pytest
import torch

from labelrefinery.cli import main
from labelrefinery.config import TrainConfig, resolve_config
from labelrefinery.schedule import LRSchedule, train_scale


@pytest.mark.parametrize("start,epochs,want", [
    (0.72, 4, [0.72, 0.86, 1, 1]),
    (0.5, 5, [0.5, 0.75, 1, 1, 1]),
    (0.5, 1, [1]),
    (0.6, 2, [0.6, 1]),
    (1.0, 4, [1, 1, 1, 1]),
])
def test_train_scale_ramps_over_the_first_half(start, epochs, want):
    cfg = resolve_config("quick", {"epochs": epochs, "train_scale_start": start}).training
    assert [train_scale(cfg, e) for e in range(epochs)] == pytest.approx(want)


@pytest.mark.parametrize("total_steps", [1, 2, 3, 4, 5, 8])
def test_onecycle_with_few_steps_runs_and_peaks(total_steps):
    """OneCycleLR divided by zero when 25% of all steps was exactly one step; every length now schedules."""
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    schedule = LRSchedule(opt, TrainConfig(epochs=1, lr=0.1, lr_schedule="onecycle"), total_steps)
    used = []  # the lr of each optimizer step
    for _ in range(total_steps):
        used.append(opt.param_groups[0]["lr"])
        opt.step()
        schedule.after_batch()
    if total_steps <= 2:
        assert used == [pytest.approx(0.1)] * total_steps
    else:
        assert max(used) > 0.09 and used[0] < 0.01 and used[-1] < max(used)  # warm up, peak, anneal


def test_cli_one_epoch_large_batch_on_digits(tmp_path, capsys):
    """The issue's crash: 4 steps in all (1,221 images, batch 400, one epoch)."""
    code = main(["run", "--dataset", "digits", "--epochs", "1", "--batch-size", "400", "--generations", "1",
                 "--no-progress", "--runs-dir", str(tmp_path)])
    assert code == 0
    assert "| R1 |" in capsys.readouterr().out
