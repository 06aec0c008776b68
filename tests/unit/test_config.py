"""Settings: parsing, presets, config files and their round trip."""

import pytest
import yaml

from labelrefinery.cli import main
from labelrefinery.config import RunConfig, parse_label_form, parse_label_noise, resolve_config
from labelrefinery.errors import ConfigError

from ..conftest import SHORT_RUN


@pytest.mark.parametrize("bad", ["topk:0", "topk:x", "softer", ""])
def test_bad_label_form(bad):
    with pytest.raises(ConfigError, match="--label-form"):
        parse_label_form(bad)


@pytest.mark.parametrize("spec", ["uniform:0.2", "symmetric", "symmetric:-0.1", "symmetric:1", "pairflip:x"])
def test_bad_noise_spec(spec):
    with pytest.raises(ConfigError, match="--label-noise must be symmetric:P, pairflip:P, swap:P or idn:P"):
        parse_label_noise(spec)


@pytest.mark.parametrize("args, message", [
    (["--label-noise", "uniform:0.2"], "--label-noise must be"),
    (["--label-noise", "symmetric:0.95"], "P must be in"),
    (["--label-smoothing", "1.0"], "--label-smoothing must be in [0, 1)"),
])
def test_bad_noise_flags_exit_2_and_write_nothing(tmp_path, capsys, args, message):
    assert main([*SHORT_RUN, "--runs-dir", str(tmp_path), "--name", "bad", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "bad").exists()


def test_noise_spec_is_compared_by_value():
    a = resolve_config("quick", {"label_noise": "symmetric:0.30"}).data.label_noise
    b = resolve_config("quick", {"label_noise": "symmetric:.3"}).data.label_noise
    assert a == b == "symmetric:0.3"


@pytest.mark.parametrize("args, message", [
    (["--noise-prior", "x"], "--noise-prior must be auto, classwise, evidence, verified or a share P"),
    (["--noise-prior", "0.95"], "is not below 1 - 1/K = 0.9"),
    (["--noise-prior", "0.2", "--labels", "online", "--augment", "online"], "got --labels online"),
    (["--noise-prior", "0.2", "--label-form", "hard"], "needs --label-form soft"),
    (["--noise-prior", "0.2", "--temperature", "3"], "needs --temperature 1"),
    (["--noise-prior", "0.2", "--gt-weight", "0.3"], "use one of them"),
    (["--noise-prior", "0.2", "--label-storage", "topk:3"], "use --label-storage auto, float32 or float16"),
    (["--noise-prior", "0.2", "--label-smoothing", "0.1"], "leave out --label-smoothing 0.1"),
    (["--noise-prior", "auto", "--cross-fit", "2"], "read too noisy; give the share you believe, e.g. --noise-prior 0.2"),
    (["--noise-prior", "verified"], "add --trusted FILE"),
    (["--trusted", "50"], "--trusted 50 takes the true labels of that many images from injected --label-noise"),
    (["--trusted", "0"], "--trusted must be a CSV file"),
    (["--label-noise", "idn:0.2", "--trusted", "5000"], "needs from 20 to"),
    (["--label-noise", "idn:0.95"], "P must be in"),
    (["--label-noise", "idn:0.2", "--true-labels", "t.csv"], "leave one out"),
    (["--true-labels", "missing.csv"], "missing.csv: No such file"),
])
def test_bad_noise_prior_exit_2_and_write_nothing(tmp_path, capsys, args, message):
    assert main([*SHORT_RUN, "--runs-dir", str(tmp_path), "--name", "bad", "--generations", "2", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "bad").exists()


def test_noise_prior_from_yaml_number_and_its_canonical_text(tmp_path):
    from labelrefinery.config import config_file_values

    (tmp_path / "c.yaml").write_text("noise_prior: 0.25\n")
    assert resolve_config("quick", config_file_values(tmp_path / "c.yaml")).refinement.noise_prior == "0.25"
    for given, stored in (("-0", "0"), ("0.0", "0"), ("0.123456789", "0.123456789"), ("auto", "auto"),
                          ("classwise", "classwise")):
        assert resolve_config("quick", {"noise_prior": given}).refinement.noise_prior == stored
    # YAML 1.1 reads an exponent without a dot as text; a number setting takes it as the number it is
    (tmp_path / "e.yaml").write_text("lr: 3e-3\nweight_decay: 1E-4\n")
    cfg = resolve_config("quick", config_file_values(tmp_path / "e.yaml"))
    assert (cfg.training.lr, cfg.training.weight_decay) == (0.003, 0.0001)
    (tmp_path / "bad.yaml").write_text("lr: fast\n")
    with pytest.raises(ConfigError, match="lr must be a number, got 'fast'"):
        config_file_values(tmp_path / "bad.yaml")


def test_config_round_trip_keeps_lists():
    cfg = resolve_config("paper", {"ensemble": [2, 3], "generations": 3})
    text = yaml.safe_dump(cfg.to_dict())
    assert "lr_steps:\n  - 140\n  - 170" in text.replace("- 140", "  - 140").replace("- 170", "  - 170") or \
        yaml.safe_load(text)["training"]["lr_steps"] == [140, 170]
    again = RunConfig.from_dict(yaml.safe_load(text))
    assert again == cfg and again.refinement.ensemble == [2, 3]


def test_refine_preset_is_patient_and_controlled():
    from labelrefinery.config import resolve_config
    from labelrefinery.generation import planned_epochs
    from labelrefinery.rundir import RunDir

    cfg = resolve_config("refine", {})
    assert cfg.refinement.controls and cfg.seeds >= 3 and cfg.refinement.labels == "offline"
    assert cfg.training.epochs >= 2 * resolve_config("quick", {}).training.epochs  # patient generations
    per_seed = planned_epochs(cfg, RunDir("/nonexistent")) // cfg.seeds
    assert per_seed == 112  # the figure --help quotes: 3 x 16 + label smoothing 16 + equal compute 48
    assert "112 epochs per seed" in " ".join(build_parser_help())


def test_noisy_preset_trains_with_mixup_beside_a_plain_control():
    from labelrefinery.config import resolve_config
    from labelrefinery.generation import planned_epochs, run_controls
    from labelrefinery.rundir import RunDir

    cfg = resolve_config("noisy", {})
    assert cfg.training.mixup == 1.0 and cfg.refinement.prior.model == "evidence"
    assert run_controls(cfg) == ("label-smoothing", "equal-compute", "no-mixup")
    assert planned_epochs(cfg, RunDir("/nonexistent")) // cfg.seeds == 64  # 3 x 8 + 8 + 24 + 8
    assert resolve_config("noisy", {"mixup": 0.0}).training.mixup == 0.0  # a flag overrides the preset


def test_quick_preset_students_keep_some_ground_truth_unless_a_noise_prior_is_given():
    from labelrefinery.config import resolve_config

    assert resolve_config("quick", {}).refinement.gt_weight == 0.3
    assert resolve_config("quick", {"noise_prior": "auto"}).refinement.gt_weight == 0.0  # the flag given wins
    assert resolve_config("quick", {"noise_prior": "0"}).refinement.gt_weight == 0.3  # off: nothing to drop
    with pytest.raises(ConfigError, match="use one of them"):  # both given: the user must choose
        resolve_config("quick", {"noise_prior": "auto", "gt_weight": 0.3})


def build_parser_help():
    from labelrefinery.cli import build_parser

    run = build_parser()._subparsers._group_actions[0].choices["run"]
    return run.format_help().split()


def test_student_epochs_shorten_later_generations_and_the_equal_compute_control():
    """--student-epochs S: generation 1 trains --epochs E, generations 2.. train S on a schedule of that length;
    the equal-compute control trains the chain's E + (G - 1) S; the progress total counts the same."""
    from labelrefinery.config import resolve_config
    from labelrefinery.errors import ConfigError
    from labelrefinery.generation import control_training, generation_training, planned_epochs
    from labelrefinery.rundir import RunDir

    cfg = resolve_config("quick", {"student_epochs": 2, "controls": True})
    assert [generation_training(cfg, g).epochs for g in (1, 2, 3)] == [4, 2, 2]
    assert generation_training(cfg, 2).lr == cfg.training.lr  # only the length changes
    assert control_training(cfg, "equal-compute").epochs == 8  # 4 + 2 x 2
    assert planned_epochs(cfg, RunDir("/nonexistent")) == 4 + 2 + 2 + 4 + 8  # generations, smoothing, equal compute
    assert generation_training(resolve_config("quick", {}), 3).epochs == 4  # 0: every generation --epochs
    with pytest.raises(ConfigError, match="--student-epochs applies only with --lr-schedule onecycle"):
        resolve_config("paper", {"student_epochs": 10})
    with pytest.raises(ConfigError, match="--student-epochs"):
        resolve_config("quick", {"student_epochs": -1})
