"""Fault injection: damaged, concurrent and odd input never gives a traceback or a wrong number.

For every kind of file in a run directory: truncated, garbled in the middle
(same size) and edited (valid format, wrong content). A run directory in use by
another process. A kill at every atomic write of a tiny run, resumed to the
same numbers. Every numeric flag with NaN, inf, a negative, zero and a huge value.
"""

import json
import math
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from labelrefinery.cli import main
from labelrefinery.config import RunConfig, leaf_fields
from labelrefinery.errors import ConfigError
from labelrefinery.losses import distillation_loss, kl_divergence, soft_target_cross_entropy
from labelrefinery.rundir import RunDir

from .conftest import interrupt_after_first_epoch

ARGS = ["--dataset", "digits", "--epochs", "1", "--generations", "2", "--no-progress", "--threads", "1"]


def run(tmp_path, name, *extra):
    return main(["run", *ARGS, "--runs-dir", str(tmp_path), "--name", name, *extra])


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished tiny run (2 generations, offline labels, ensemble) to copy and damage."""
    d = tmp_path_factory.mktemp("finished")
    assert run(d, "run", "--ensemble", "1,2") == 0
    return d / "run"


@pytest.fixture
def copy(finished, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(finished, dst)
    return dst


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def garble(path):
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    for i in range(mid, min(len(data), mid + 64)):
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))


def one_line_error(capsys, *needles):
    err = capsys.readouterr().err.strip()
    lines = [line for line in err.splitlines() if line.startswith("refinery: error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def resume(copy):
    return main(["run", *ARGS, "--runs-dir", str(copy.parent), "--name", copy.name, "--ensemble", "1,2"])


# --------------------------------------------------------------------------- damaged files

DAMAGE = {"truncated": truncate, "garbled": garble}
READERS = {  # file -> the command that must read it
    "config.yaml": "run", "seed-0/gen-2/summary.json": "run", "seed-0/gen-1/labels.npz": "run",
    "seed-0/gen-1/model.safetensors": "evaluate", "seed-0/gen-2/model.safetensors": "evaluate",
    "ensemble.json": "run",
}


def _read_with(command, copy):
    if command == "run":
        return resume(copy)
    return main(["evaluate", str(copy), "--ensemble", "1,2", "--device", "cpu"])


@pytest.mark.parametrize("damage", sorted(DAMAGE))
@pytest.mark.parametrize("name", sorted(READERS))
def test_damaged_file_is_one_line_naming_it(copy, capsys, name, damage):
    DAMAGE[damage](copy / name)
    assert _read_with(READERS[name], copy) == 2
    one_line_error(capsys, os.path.basename(name))


def test_damaged_summary_names_the_generation_to_delete(copy, capsys):
    garble(copy / "seed-0/gen-2/summary.json")
    assert resume(copy) == 2
    one_line_error(capsys, "summary.json", "seed-0/gen-2")


def _rewrite_labels(copy, edit):
    path = copy / "seed-0/gen-1/labels.npz"
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    edit(arrays)
    with open(path, "wb") as f:
        np.savez(f, **arrays)


LABEL_EDITS = {
    "nan": lambda a: a["labels"].__setitem__((0, 0), np.nan),
    "negative": lambda a: a["labels"].__setitem__((0, slice(0, 2)), [-0.5, 1.5]),
    "rows-do-not-sum-to-1": lambda a: a.__setitem__("labels", a["labels"] * 2),
    "wrong-shape": lambda a: a.__setitem__("labels", a["labels"][:, :5]),
    "wrong-rows": lambda a: a.__setitem__("labels", a["labels"][:-3]),
}


@pytest.mark.parametrize("edit", sorted(LABEL_EDITS))
@pytest.mark.parametrize("with_hash", [True, False])
def test_edited_labels_are_refused(copy, capsys, edit, with_hash):
    """Labels that are valid npz but not probability rows of the run's shape are never trained on."""
    _rewrite_labels(copy, LABEL_EDITS[edit])
    if not with_hash:  # a run directory from before file hashes were recorded
        for g in (1, 2):
            p = copy / f"seed-0/gen-{g}/summary.json"
            s = json.loads(p.read_text())
            s.pop("files", None)
            s.pop("sha256", None)  # older versions wrote neither file checksums nor the summary's own
            p.write_text(json.dumps(s))
    shutil.rmtree(copy / "seed-0/gen-2")  # generation 2 must be retrained from generation 1's labels
    assert resume(copy) == 2
    one_line_error(capsys, "labels.npz")


def test_weights_replaced_by_nan_are_refused(copy, capsys):
    path = copy / "seed-0/gen-1/model.safetensors"
    from safetensors import safe_open

    with safe_open(path, "pt") as f:
        meta = f.metadata()
    tensors = load_file(path)
    key = next(k for k, v in tensors.items() if v.is_floating_point())
    tensors[key] = torch.full_like(tensors[key], float("nan"))
    save_file(tensors, path, metadata=meta)
    assert main(["evaluate", str(copy), "--ensemble", "1,2", "--device", "cpu"]) == 2
    one_line_error(capsys, "model.safetensors")


def test_edited_summary_values_are_refused(copy, capsys):
    p = copy / "seed-0/gen-2/summary.json"
    s = json.loads(p.read_text())
    s["test_top1"] = "ninety"
    p.write_text(json.dumps(s))
    assert resume(copy) == 2
    one_line_error(capsys, "summary.json")


def test_edited_config_value_is_refused(copy, capsys):
    p = copy / "config.yaml"
    cfg = yaml.safe_load(p.read_text())
    cfg["training"]["lr"] = "fast"
    p.write_text(yaml.safe_dump(cfg))
    assert resume(copy) == 2
    one_line_error(capsys, "config.yaml")


def test_partial_last_metrics_line_is_read(copy, capsys):
    with open(copy / "metrics.jsonl", "ab") as f:
        f.write(b'{"kind": "epoch", "seed": 0, "gen')
    assert resume(copy) == 0
    records = RunDir(copy).read_metrics()
    assert records and all("kind" in r for r in records)


def test_derived_files_are_rebuilt(copy):
    """results.json, results.md and split.npz are rebuilt from what the run holds."""
    truncate(copy / "results.json")
    garble(copy / "seed-0/split.npz")
    before = json.loads((copy.parent.parent / "finished0" / "run" / "results.json").read_text()) \
        if (copy.parent.parent / "finished0").exists() else None
    assert resume(copy) == 0
    results = json.loads((copy / "results.json").read_text())
    assert [g["generation"] for g in results["generations"]] == [1, 2]
    with np.load(copy / "seed-0/split.npz") as z:
        assert len(z["train_indices"]) > 0
    del before


def test_leftovers_of_a_killed_run_are_removed(copy):
    (copy / "seed-0/gen-1/.labels.npz.abc123.tmp").write_bytes(b"partial")
    (copy / ".config.yaml.xyz.tmp").write_bytes(b"partial")
    torch.save({"epoch": 0}, copy / "seed-0/gen-1/train-state.pt")  # killed after summary, before unlink
    assert resume(copy) == 0
    assert not list(copy.rglob("*.tmp"))
    assert not (copy / "seed-0/gen-1/train-state.pt").exists()


def test_kill_during_first_write_resumes(tmp_path):
    """A new run directory killed while writing its first file (a temporary file is all there is)."""
    d = tmp_path / "new"
    d.mkdir()
    (d / ".config.yaml.k1ll3d.tmp").write_bytes(b"model: conv")
    assert main(["run", *ARGS, "--runs-dir", str(tmp_path), "--name", "new"]) == 0
    assert RunDir(d).is_finished(0, 2)


@pytest.fixture
def interrupted(tmp_path, monkeypatch):
    """A run killed after the first epoch of generation 2 (its train-state.pt is there)."""
    with interrupt_after_first_epoch(monkeypatch, "gen-2"):
        assert run(tmp_path, "mid", "--epochs", "2") == 130
    return tmp_path / "mid"


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_resume_file_is_one_line(interrupted, capsys, damage):
    DAMAGE[damage](interrupted / "seed-0/gen-2/train-state.pt")
    assert run(interrupted.parent, "mid", "--epochs", "2") == 2
    one_line_error(capsys, "train-state.pt", "delete")


# --------------------------------------------------------------------------- one process per run directory


def test_second_process_is_refused_while_the_first_holds_the_run(copy, capsys):
    import fcntl

    lock = copy / ".lock"
    with open(lock, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        f.seek(0)
        f.truncate()
        f.write("4242\n")
        f.flush()
        assert resume(copy) == 2
        one_line_error(capsys, "4242")
        assert main(["evaluate", str(copy), "--ensemble", "1,2", "--device", "cpu"]) == 2
        one_line_error(capsys, "4242")
    assert resume(copy) == 0  # released: the next process runs


def test_lock_of_a_killed_process_never_blocks(copy):
    code = "import fcntl, os, sys; f = open(sys.argv[1], 'a+'); fcntl.flock(f, fcntl.LOCK_EX); os._exit(9)"
    subprocess.run([sys.executable, "-c", code, str(copy / ".lock")], check=False)
    assert (copy / ".lock").exists()
    assert resume(copy) == 0


def test_concurrent_fresh_runs_never_share_a_directory(tmp_path):
    """Two processes started on the same new run directory: one trains, the other exits 2, nothing is lost."""
    cmd = [sys.executable, "-m", "labelrefinery", "run", *ARGS, "--runs-dir", str(tmp_path), "--name", "same"]
    procs = [subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes in ([0, 0], [0, 2]), results
    rd = RunDir(tmp_path / "same")
    assert rd.is_finished(0, 2)
    epochs = [r for r in rd.read_metrics() if r["kind"] == "epoch"]
    assert len(epochs) == 2  # no duplicated metrics


# --------------------------------------------------------------------------- a kill at every write

KILLER = textwrap.dedent("""
    import os, sys
    import labelrefinery.fileio as fileio
    target, count = int(sys.argv[1]), [0]
    real = fileio.atomic_write_bytes
    def killing(path, data):
        count[0] += 1
        if count[0] == target:
            tmp = path.parent / f".{path.name}.killed.tmp"
            tmp.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(data[: len(data) // 2])
            os._exit(137)
        real(path, data)
    import labelrefinery.rundir, labelrefinery.checkpoint
    for m in (fileio, labelrefinery.rundir, labelrefinery.checkpoint):
        m.atomic_write_bytes = killing
    from labelrefinery.cli import main
    sys.exit(main(sys.argv[2:]))
""")


def _count_writes(tmp_path):
    import labelrefinery.checkpoint as ck
    import labelrefinery.fileio as fileio

    calls = []
    real = fileio.atomic_write_bytes

    def counting(path, data):
        calls.append(path.name)
        real(path, data)

    with pytest.MonkeyPatch.context() as mp:
        for m in (fileio, ck):
            mp.setattr(m, "atomic_write_bytes", counting)
        assert run(tmp_path, "reference") == 0
    return calls


def _killed_runs(tmp_path, count: int, parallel: int = 4) -> dict[int, int]:
    """Start ``count`` runs, run ``n`` killed at its n-th atomic write, ``parallel`` at a time (each is mostly
    interpreter and torch start-up); return each one's exit status."""
    codes, running = {}, []
    for n in range(1, count + 1):
        cmd = [sys.executable, "-c", KILLER, str(n), "run", *ARGS, "--runs-dir", str(tmp_path), "--name", f"kill{n}"]
        running.append((n, subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)))
        if len(running) == parallel or n == count:
            for m, proc in running:
                codes[m] = proc.wait()
            running = []
    return codes


def test_kill_at_every_write_resumes_to_the_same_numbers(tmp_path):
    writes = _count_writes(tmp_path)
    reference = RunDir(tmp_path / "reference")
    want = [reference.read_summary(0, g)["test_top1"] for g in (1, 2)]
    want_labels = reference.load_labels(0, 2)["labels"]
    assert len(writes) >= 8, writes
    codes = _killed_runs(tmp_path, len(writes))
    for n in range(1, len(writes) + 1):
        name = f"kill{n}"
        assert codes[n] == 137, (n, writes[n - 1])
        assert run(tmp_path, name) == 0, (n, writes[n - 1])
        rd = RunDir(tmp_path / name)
        assert [rd.read_summary(0, g)["test_top1"] for g in (1, 2)] == want, (n, writes[n - 1])
        assert np.array_equal(rd.load_labels(0, 2)["labels"], want_labels), (n, writes[n - 1])
        assert not list((tmp_path / name).rglob("*.tmp")), (n, writes[n - 1])


# --------------------------------------------------------------------------- every numeric flag

NUMERIC = [(f.name, hint) for f, hint in leaf_fields()
           if hint in (int, float) or str(hint) in ("int | None", "float | None")]
ZERO_OK = {"weight_decay", "plateau_patience_epochs", "min_lr", "early_stop_patience_epochs",
           "early_stop_min_delta", "gt_weight", "adversarial_jitter", "threads", "label_smoothing", "cross_fit",
           "workers"}
HUGE_OK = {"plateau_patience_epochs", "early_stop_patience_epochs"}
VALUES = {"nan": math.nan, "inf": math.inf, "negative": -1, "zero": 0, "huge": 10**12}


def _cli_value(hint, value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return str(int(value)) if "int" in str(hint) else str(float(value))


@pytest.mark.parametrize("kind", sorted(VALUES))
@pytest.mark.parametrize("name,hint", NUMERIC, ids=[n for n, _ in NUMERIC])
def test_numeric_flag(tmp_path, capsys, name, hint, kind):
    value = VALUES[kind]
    accepted = (kind == "zero" and name in ZERO_OK) or (kind == "huge" and name in HUGE_OK)
    if accepted:
        cfg = RunConfig.from_flat({name: value})
        assert cfg.flat()[name] == value
        return
    flag = "--" + name.replace("_", "-")
    assert main(["run", "--dataset", "digits", "--no-progress", "--runs-dir", str(tmp_path), flag,
                 _cli_value(hint, value)]) == 2
    one_line_error(capsys, flag)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("args,message", [
    (["--svhn-extra"], "--svhn-extra"),
    (["--skip-bad-images"], "--skip-bad-images"),
    (["--data-in-memory", "maybe"], "--data-in-memory"),
    (["--workers", "2"], "--workers"),
    (["--cache-dir", "cache"], "--cache-dir"),
    (["--label-storage", "topk:11"], "--label-storage topk:11"),
    (["--image-size", "64"], "--image-size"),
    (["--static-copies", "3"], "--static-copies"),
    (["--lr-steps", "1,2"], "--lr-steps"),
    (["--refinery-model", "convnet"], "--refinery-model"),
    (["--jitter-eps", "0.01"], "--jitter-eps"),
    (["--label-form", "topk:11"], "topk:11"),
    (["--batch-size", "100000"], "--batch-size"),
    (["--min-lr", "0.1", "--lr", "0.01", "--lr-schedule", "plateau"], "--min-lr"),
    (["--lr-steps", "1,500", "--lr-schedule", "steps"], "--lr-steps"),
])
def test_flags_that_do_not_apply_or_do_not_fit_are_refused(tmp_path, capsys, args, message):
    assert main(["run", "--dataset", "digits", "--no-progress", "--runs-dir", str(tmp_path), *args]) == 2
    one_line_error(capsys, message)
    assert not list(tmp_path.iterdir())


def test_argparse_errors_are_one_line(tmp_path, capsys):
    assert main(["run", "--epochs", "many"]) == 2
    one_line_error(capsys, "--epochs")
    assert main(["run", "--bogus-flag"]) == 2
    one_line_error(capsys, "--bogus-flag")


# --------------------------------------------------------------------------- public losses and targets


def test_losses_reject_targets_that_are_not_probability_rows():
    logits = torch.randn(4, 3)
    bad = {
        "nan": torch.tensor([[float("nan"), 0.5, 0.5]] * 4),
        "negative": torch.tensor([[-0.5, 1.0, 0.5]] * 4),
        "not summing to 1": torch.full((4, 3), 0.5),
        "float class indices": torch.tensor([0.0, 1.0, 2.0, 1.0]),
        "indices out of range": torch.tensor([0, 1, 2, 3]),
    }
    for name, t in bad.items():
        for fn in (soft_target_cross_entropy, kl_divergence, distillation_loss):
            with pytest.raises(ValueError):
                fn(logits, t)


def test_kl_never_negative_and_zero_probability_never_nan():
    p = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0]])
    logits = torch.tensor([[50.0, -200.0, -200.0], [0.0, 0.0, -float("inf")]])
    assert torch.isfinite(soft_target_cross_entropy(logits, p))
    assert torch.isfinite(kl_divergence(logits, p)) and kl_divergence(logits, p) >= 0
    same = torch.softmax(torch.randn(64, 10) * 5, 1)
    assert kl_divergence(same.log(), same) >= 0


def test_pt_checkpoint_class_names_are_checked(tmp_path, capsys):
    from labelrefinery.models import ModelSpec, build_model

    state = build_model(ModelSpec("convnet", 10, 1, 8)).state_dict()
    path = tmp_path / "ref.pt"
    torch.save({"model": state, "classes": [f"c{i}" for i in range(10)]}, path)
    assert main(["run", *ARGS, "--runs-dir", str(tmp_path / "runs"), "--refinery-checkpoint", str(path),
                 "--refinery-model", "convnet"]) == 2
    one_line_error(capsys, "class 0 is 'c0' there but '0' in digits")


def test_pickled_checkpoint_says_so_first(tmp_path, capsys):
    path = tmp_path / "pickled.pt"
    torch.save({"model": {"weight": torch.zeros(2)}, "note": ConfigError("a pickled object")}, path)
    assert main(["run", *ARGS, "--runs-dir", str(tmp_path / "runs"), "--refinery-checkpoint", str(path)]) == 2
    line = one_line_error(capsys)
    assert line.startswith(f"refinery: error: {path} holds pickled Python objects")
    assert "\x1b" not in line and "Unsupported global: GLOBAL labelrefinery.errors.ConfigError" in line


def test_sixteen_bit_grayscale_keeps_its_values(tmp_path):
    from PIL import Image

    from labelrefinery.data.files import read_image

    ramp = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)  # 0 .. 65520
    path = tmp_path / "g16.png"
    Image.fromarray(ramp).save(path)
    assert Image.open(path).mode.startswith("I")
    img = read_image(str(path), 64)
    assert img.dtype == torch.uint8 and img.shape == (3, 64, 64)
    expected = torch.from_numpy((ramp.astype(np.float64) / 257).round().astype(np.uint8))
    assert (img[0].int() - expected.int()).abs().max() <= 1
    assert img.float().std() > 50  # a ramp, not clipped to white
    from labelrefinery.classifier import read_image as read_for_predict

    for channels in (3, 1):  # `refinery predict` reads the file as training did
        assert torch.equal(read_for_predict(path, channels), img[:channels])


def batchnorm1d_head(num_classes: int, in_channels: int, image_size: int) -> torch.nn.Module:
    """A small model with alexnet_bn's kind of head (Linear - BatchNorm1d - ReLU - Linear), where a batch of one
    in train mode raises; built through ``--model tests.test_faults:batchnorm1d_head``."""
    return torch.nn.Sequential(torch.nn.Conv2d(in_channels, 8, 3, padding=1), torch.nn.BatchNorm2d(8),
                               torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten(),
                               torch.nn.Linear(32, 16, bias=False), torch.nn.BatchNorm1d(16), torch.nn.ReLU(),
                               torch.nn.Linear(16, num_classes))


@pytest.mark.parametrize("model", ["tests.test_faults:batchnorm1d_head", "convnet"])
def test_a_batch_of_one_never_reaches_batchnorm_in_train_mode(tmp_path, model, monkeypatch):
    """Jitter subsets of one image and a last batch of one all run."""
    import labelrefinery.targets as targets

    sizes = []
    jitter = targets.adversarial_jitter
    monkeypatch.setattr(targets, "adversarial_jitter", lambda student, refinery, x, *a: sizes.append(len(x)) or
                        jitter(student, refinery, x, *a))
    # 1221 training views; batch 1220 leaves a last batch of 1 (dropped); this seed's jitter picks one image
    assert main(["run", "--dataset", "digits", "--model", model, "--epochs", "2", "--generations", "2",
                 "--labels", "online", "--adversarial-jitter", "0.001", "--batch-size", "1220", "--no-progress",
                 "--threads", "2", "--runs-dir", str(tmp_path)]) == 0
    assert 1 in sizes


def test_class_with_a_single_image_is_one_line(tmp_path, capsys):
    from PIL import Image

    for split, counts in (("train", {"a": 24, "b": 1}), ("val", {"a": 2, "b": 2})):
        for cls, n in counts.items():
            (tmp_path / "imgs" / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (8, 8), (i * 20, 0, 0)).save(tmp_path / "imgs" / split / cls / f"{i}.png")
    code = main(["run", "--dataset", f"folder:{tmp_path / 'imgs'}", "--image-size", "8", "--data-dir",
                 str(tmp_path / "cache"), "--no-progress", "--runs-dir", str(tmp_path / "runs")])
    assert code == 2
    one_line_error(capsys, "single image")


def test_train_size_too_small_names_the_flag(tmp_path, capsys):
    assert main(["run", "--dataset", "digits", "--train-size", "20", "--no-progress", "--runs-dir", str(tmp_path)]) == 2
    one_line_error(capsys, "--train-size 20")


def test_checkpoint_spec_with_unknown_keys_is_one_line(tmp_path, capsys):
    from labelrefinery.checkpoint import save_checkpoint
    from labelrefinery.models import ModelSpec, build_model

    path = tmp_path / "odd.safetensors"
    spec = {**ModelSpec("convnet", 10, 1, 8).to_dict(), "depth_multiplier": 2}
    save_checkpoint(path, build_model(ModelSpec("convnet", 10, 1, 8)), [str(i) for i in range(10)], spec)
    assert main(["run", *ARGS, "--runs-dir", str(tmp_path / "runs"), "--refinery-checkpoint", str(path)]) == 2
    one_line_error(capsys, "model spec")


# --------------------------------------------------------------------------- issue: every number is the user's

def _tree(root):
    """Every file under ``root`` with its bytes and mtime: what a read-only command must leave as it was."""
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("command", ["report", "evaluate", "inspect", "label-issues"])
def test_an_edited_number_is_refused_by_every_command_that_shows_it(copy, tmp_path, capsys, command):
    """A summary whose test top-1 was edited (valid JSON, a plausible number) is never shown as the run's."""
    p = copy / "seed-0/gen-2/summary.json"
    s = json.loads(p.read_text())
    s["test_top1"] = 12.5
    p.write_text(json.dumps(s, indent=2))
    extra = {"inspect": ["--out", str(tmp_path / "r.html")], "label-issues": ["--generation", "2"],
             "evaluate": ["--device", "cpu"], "report": []}[command]
    assert main([command, str(copy), *extra]) == 2
    assert "12.5" not in one_line_error(capsys, "gen-2/summary.json", "edited")


def test_an_edited_ensemble_number_is_refused(copy, capsys):
    p = copy / "ensemble.json"
    entries = json.loads(p.read_text())
    entries[0]["test_top1_mean"] = 99.9
    p.write_text(json.dumps(entries))
    assert main(["report", str(copy)]) == 2
    one_line_error(capsys, "ensemble.json", "edited")


def test_damaged_metrics_and_run_facts_are_named_where_nothing_depends_on_them(copy, tmp_path, capsys):
    lines = (copy / "metrics.jsonl").read_text().splitlines()
    lines[1] = lines[1][: len(lines[1]) // 2] + "#garbled#"
    (copy / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    garble(copy / "run.json")
    assert main(["inspect", str(copy), "--out", str(tmp_path / "r.html"), "--images", "1"]) == 0
    err = capsys.readouterr().err
    assert "metrics.jsonl line 2 is damaged" in err and "run.json is damaged" in err and "Traceback" not in err
    (copy / "metrics.jsonl").unlink()
    assert main(["inspect", str(copy), "--out", str(tmp_path / "r.html"), "--images", "1"]) == 0
    assert "metrics.jsonl is missing" in capsys.readouterr().err


def test_read_only_commands_leave_the_run_directory_as_it_was(copy, tmp_path, capsys):
    """evaluate, report --out, label-issues --out, inspect --out and predict only read: no lock, no file."""
    from PIL import Image

    before = _tree(copy)
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(images / "a.png")
    for argv in (["evaluate", str(copy), "--device", "cpu"], ["report", str(copy), "--out", str(tmp_path / "rep")],
                 ["label-issues", str(copy), "--out", str(tmp_path / "issues.csv")],
                 ["inspect", str(copy), "--out", str(tmp_path / "page.html"), "--images", "1"],
                 ["predict", str(copy), str(images), "--device", "cpu"]):
        assert main(argv) == 0, (argv, capsys.readouterr().err)
    assert _tree(copy) == before


@pytest.fixture
def read_only(monkeypatch):
    """Make every directory given to it behave as on a read-only file system (as for root, whom permission bits
    do not stop): opening a file there for writing fails with EROFS."""
    import builtins
    import errno

    roots = []
    real_open, real_os_open = builtins.open, os.open

    def inside(path):
        try:
            resolved = os.path.realpath(os.fspath(path))
        except TypeError:
            return False
        return any(resolved == r or resolved.startswith(r + os.sep) for r in roots)

    def refuse(path):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(path))

    def guarded_open(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+") and inside(file):
            refuse(file)
        return real_open(file, mode, *args, **kwargs)

    def guarded_os_open(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and inside(path):
            refuse(path)
        return real_os_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded_open)
    monkeypatch.setattr(os, "open", guarded_os_open)
    return lambda root: roots.append(os.path.realpath(root))


def test_commands_that_read_work_on_a_read_only_run_directory(copy, tmp_path, capsys, read_only):
    read_only(copy)
    assert main(["evaluate", str(copy), "--device", "cpu"]) == 0
    assert main(["report", str(copy)]) == 0  # the table is printed; results cannot be updated there
    captured = capsys.readouterr()
    assert "| R2 |" in captured.out and "not updated" in captured.err and "--out" in captured.err
    assert main(["label-issues", str(copy), "--out", str(tmp_path / "issues.csv")]) == 0
    assert main(["inspect", str(copy), "--out", str(tmp_path / "page.html"), "--images", "1"]) == 0
    capsys.readouterr()
    assert main(["label-issues", str(copy)]) == 2  # its default place is in the run: one line, say where else
    one_line_error(capsys, "label_issues.csv", "Read-only")


@pytest.mark.parametrize("command", ["run", "evaluate", "report", "inspect", "label-issues", "predict"])
def test_a_damaged_config_is_refused_by_every_command(copy, tmp_path, capsys, command):
    garble(copy / "config.yaml")
    argv = {"run": ["run", "--resume", str(copy)], "evaluate": ["evaluate", str(copy)],
            "report": ["report", str(copy)], "inspect": ["inspect", str(copy), "--out", str(tmp_path / "p.html")],
            "label-issues": ["label-issues", str(copy), "--out", str(tmp_path / "i.csv")],
            "predict": ["predict", str(copy), str(tmp_path)]}[command]
    assert main(argv) == 2
    one_line_error(capsys, "config.yaml")


def test_a_model_factory_that_cannot_be_called_as_documented_is_one_line(tmp_path, capsys):
    for factory in ("os:system", "os:getcwd", "torch.nn:Linear"):
        assert run(tmp_path, "f", "--model", factory) == 2
        one_line_error(capsys, factory, "factory(num_classes=K, in_channels=C, image_size=S)")
    assert not (tmp_path / "f").exists()


def test_a_config_file_that_is_not_utf8_text_is_one_line(tmp_path, capsys):
    (tmp_path / "b.yaml").write_bytes(bytes(range(256)))
    assert run(tmp_path, "c", "--config", str(tmp_path / "b.yaml")) == 2
    one_line_error(capsys, "b.yaml", "UTF-8")
    assert not (tmp_path / "c").exists()


def test_the_epoch_line_gives_the_epochs_peak_learning_rate(tmp_path, capsys):
    """One-cycle: the rate at an epoch's start is its lowest; the line and metrics give its peak."""
    assert run(tmp_path, "lr", "--lr-schedule", "onecycle", "--lr", "0.003", "--generations", "1",
               "--epochs", "2", "--progress") == 0
    epochs = [r for r in RunDir(tmp_path / "lr").read_metrics() if r.get("kind") == "epoch"]
    assert epochs[0]["lr"] < 0.001 and epochs[0]["lr_peak"] == pytest.approx(0.003)
    assert "peak lr 0.003" in capsys.readouterr().err


def test_a_factory_or_model_module_that_fails_is_one_line(tmp_path, capsys, monkeypatch):
    (tmp_path / "mods").mkdir()
    (tmp_path / "mods/raising.py").write_text("def f(num_classes, in_channels, image_size):\n"
                                              "    raise RuntimeError('boom from factory')\n")
    (tmp_path / "mods/broken.py").write_text("def f(:\n")
    monkeypatch.syspath_prepend(str(tmp_path / "mods"))
    assert run(tmp_path, "a", "--model", "raising:f") == 2
    one_line_error(capsys, "raising:f", "RuntimeError: boom from factory")
    assert run(tmp_path, "b", "--model", "broken:f") == 2
    one_line_error(capsys, "broken:f", "SyntaxError")


def test_an_edited_split_is_refused(copy, tmp_path, capsys):
    path = copy / "seed-0/split.npz"
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["train_labels"][:20] = (arrays["train_labels"][:20] + 1) % 10  # a valid npz, labels changed
    np.savez(path, **arrays)
    assert main(["label-issues", str(copy), "--out", str(tmp_path / "i.csv")]) == 2
    one_line_error(capsys, "split.npz", "edited")
    assert resume(copy) == 0  # a run rebuilds a damaged split from its seed
    assert main(["label-issues", str(copy), "--out", str(tmp_path / "i.csv")]) == 0


def test_a_seed_directory_from_another_run_is_refused_and_left_as_it_is(copy, tmp_path, capsys):
    other = tmp_path / "other"
    assert main(["run", *ARGS, "--label-noise", "symmetric:0.3", "--runs-dir", str(tmp_path), "--name",
                 "other"]) == 0
    shutil.rmtree(copy / "seed-0")
    shutil.copytree(other / "seed-0", copy / "seed-0")
    before = _tree(copy / "seed-0")
    for argv in (["report", str(copy)], ["evaluate", str(copy), "--device", "cpu"],
                 ["label-issues", str(copy), "--out", str(tmp_path / "i.csv")],
                 ["inspect", str(copy), "--out", str(tmp_path / "p.html")], ["predict", str(copy), str(tmp_path)]):
        capsys.readouterr()
        assert main(argv) == 2, argv
        one_line_error(capsys, "belongs to another run")
    capsys.readouterr()
    assert resume(copy) == 2
    capsys.readouterr()
    assert _tree(copy / "seed-0") == before  # a refused command changed nothing


def test_a_model_file_carries_its_own_checksum(copy, tmp_path, capsys):
    path = copy / "seed-0/gen-2/model.safetensors"
    loose = tmp_path / "model.safetensors"
    shutil.copy(path, loose)
    garble_tail = bytearray(loose.read_bytes())
    for i in range(len(garble_tail) - 64, len(garble_tail) - 48):  # weights, not the header
        garble_tail[i] ^= 0x5A
    loose.write_bytes(bytes(garble_tail))
    assert main(["predict", str(loose), str(tmp_path)]) == 2
    one_line_error(capsys, "model.safetensors", "weights do not match")


def test_evaluate_refuses_an_ensemble_of_one_generation_repeated(copy, capsys):
    for value in ("1,1", ""):
        assert main(["evaluate", str(copy), "--ensemble", value]) == 2
        one_line_error(capsys, "--ensemble")
    assert "1, 1" not in (copy / "ensemble.json").read_text()


def test_a_cut_metrics_file_is_named(copy, tmp_path, capsys):
    data = (copy / "metrics.jsonl").read_bytes()
    (copy / "metrics.jsonl").write_bytes(data[: len(data) // 3])
    assert main(["inspect", str(copy), "--out", str(tmp_path / "p.html"), "--images", "1"]) == 0
    assert "metrics.jsonl lacks the records of" in capsys.readouterr().err
