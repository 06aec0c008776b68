"""Label noise: injection, label quality, disputes and suggested labels, noise estimates and posteriors."""

import math

import numpy as np
import pytest
import torch

from labelrefinery.config import resolve_config
from labelrefinery.data import load_dataset
from labelrefinery.errors import ConfigError
from labelrefinery.noise import inject_label_noise, label_statistics
from labelrefinery.protocol import seed_data, with_label_noise
from labelrefinery.seeding import label_noise_generator

from ..conftest import needs_fashion_mnist


def test_symmetric_noise_rate_and_classes():
    labels = torch.arange(60000) % 10
    noise = inject_label_noise(labels, "symmetric:0.4", 10, label_noise_generator())
    rate = noise.flipped.float().mean().item()
    assert abs(rate - 0.4) < 4 * math.sqrt(0.4 * 0.6 / 60000)  # within binomial error
    assert torch.equal(noise.clean, labels) and torch.equal(noise.flipped, noise.noisy != labels)
    # every other class is reached about equally often from class 0
    moved = noise.noisy[(labels == 0) & noise.flipped]
    counts = torch.bincount(moved, minlength=10)
    assert counts[0] == 0 and counts[1:].min() > 0.6 * counts[1:].float().mean()
    again = inject_label_noise(labels, "symmetric:0.4", 10, label_noise_generator())
    assert torch.equal(again.noisy, noise.noisy)  # one stream, the same corruption every time


def test_pairflip_moves_to_next_class():
    labels = torch.arange(1000) % 4
    noise = inject_label_noise(labels, "pairflip:0.3", 4, label_noise_generator())
    assert torch.equal(noise.noisy[noise.flipped], (labels[noise.flipped] + 1) % 4)
    assert 0.25 < noise.flipped.float().mean() < 0.35


def test_noise_rate_bound_needs_classes():
    with pytest.raises(ConfigError, match=r"P must be in \[0, 0.750\) for 4 classes"):
        inject_label_noise(torch.zeros(10, dtype=torch.int64), "symmetric:0.8", 4, label_noise_generator())


def test_noise_touches_training_split_only_and_every_seed_sees_it():
    ds = load_dataset("digits")
    noisy, noise = with_label_noise(ds, "symmetric:0.3")
    assert torch.equal(noisy.test.labels, ds.test.labels) and torch.equal(noisy.train.images, ds.train.images)
    assert torch.equal(noise.clean, ds.train.labels) and torch.equal(noisy.train.labels, noise.noisy)
    cfg = resolve_config("quick", {"dataset": "digits", "label_noise": "symmetric:0.3"})
    for seed in (0, 1):
        data = seed_data(noisy, cfg, seed, torch.device("cpu"), noise)
        assert torch.equal(data.views.labels, noise.noisy[data.views.indices])
        assert torch.equal(data.clean_labels, ds.train.labels[data.views.indices])
        assert torch.equal(data.val_labels, noise.noisy[data.val_idx])  # validation is as noisy as training
        assert torch.equal(data.test_labels, ds.test.labels)


def test_label_quality_hand_made():
    # 6 images, 3 classes. clean: 0 0 1 1 2 2; given: flips at 1 (0->1) and 4 (2->0).
    clean = torch.tensor([0, 0, 1, 1, 2, 2])
    given = torch.tensor([0, 1, 1, 1, 0, 2])
    # refined argmax: 0 0 1 2 1 2 -> image 1 corrected; image 4 disputed but wrong; image 3 clean and harmed.
    refined = torch.nn.functional.one_hot(torch.tensor([0, 0, 1, 2, 1, 2]), 3).float().numpy()
    clean, given = clean.numpy(), given.numpy()
    q = label_statistics(given, refined, clean)
    assert q["disputed"] == pytest.approx(3 / 6)
    assert q["flipped"] == pytest.approx(2 / 6)
    assert q["corrected"] == pytest.approx(1 / 2)
    assert q["harmed"] == pytest.approx(1 / 4)
    assert q["detection_precision"] == pytest.approx(2 / 3) and q["detection_recall"] == pytest.approx(1.0)
    assert q["detection_f1"] == pytest.approx(0.8)
    assert set(label_statistics(given, refined)) == {"mean_entropy", "agreement", "disputed", "changed"}
    assert label_statistics(given, refined)["agreement"] == pytest.approx(0.5)
    none_flipped = label_statistics(clean, refined, clean)
    assert none_flipped["corrected"] is None and none_flipped["detection_recall"] is None


def _noisy_rows(clean: torch.Tensor, rate: float, num_classes: int) -> torch.Tensor:
    """What a refinery sure of each image's true class predicts after fitting labels with symmetric noise."""
    rows = torch.full((len(clean), num_classes), rate / (num_classes - 1))
    return rows.scatter_(1, clean.view(-1, 1), 1 - rate)


def test_symmetric_noise_estimate():
    from labelrefinery.noise import estimate_symmetric_noise

    clean = torch.arange(500) % 10
    given = clean.clone()
    given[:250] = (clean[:250] + 3) % 10  # half the given labels wrong: the cap (disputed share) is 0.5
    assert estimate_symmetric_noise(given, _noisy_rows(clean, 0.4, 10)) == pytest.approx(0.4, abs=1e-5)
    assert estimate_symmetric_noise(given, _noisy_rows(clean, 0.1, 10)) == pytest.approx(0.1, abs=1e-5)
    assert estimate_symmetric_noise(given, torch.eye(10)[clean]) == 0.0  # memorised: nothing to estimate
    # an ambiguous second class on every image does not move the estimate
    rows = _noisy_rows(clean, 0.4, 10)
    rows[torch.arange(500), (clean + 1) % 10] += 0.2
    rows[torch.arange(500), clean] -= 0.2
    assert estimate_symmetric_noise(given, rows) == pytest.approx(0.4, abs=1e-5)
    # an under-trained refinery, unsure of every image but disputing only 2% of the labels: capped at 0.02
    unsure = _noisy_rows(clean, 0.6, 10)
    assert estimate_symmetric_noise(torch.where(torch.arange(500) < 10, (clean + 1) % 10, clean), unsure) == \
        pytest.approx(0.02)


def test_noisy_label_posterior_hand_made():
    from labelrefinery.noise import noisy_label_posterior, symmetric_transition

    # K = 3, r = 0.3: T[c, y] = 0.7 if c == y else 0.15.
    t = symmetric_transition(3, 0.3)
    assert torch.allclose(t, torch.tensor([[0.7, 0.15, 0.15], [0.15, 0.7, 0.15], [0.15, 0.15, 0.7]]))
    refined = torch.tensor([[0.6, 0.3, 0.1], [0.6, 0.3, 0.1]])
    given = torch.tensor([0, 1])
    q = noisy_label_posterior(given, refined, t, denoise=False)
    expected = torch.tensor([[0.6 * 0.7, 0.3 * 0.15, 0.1 * 0.15], [0.6 * 0.15, 0.3 * 0.7, 0.1 * 0.15]])
    assert torch.allclose(q, expected / expected.sum(1, keepdim=True))
    assert q[1].argmax() == 1  # the refinery's 0.6 does not overrule a given label it gives 0.3
    # rows of a refinery that fitted noisy labels map back to the true class before Bayes' rule
    noisy = _noisy_rows(torch.tensor([2, 2]), 0.3, 3)
    q = noisy_label_posterior(torch.tensor([2, 0]), noisy, t, denoise=True)
    assert q[0, 2] > 0.999 and q[1].argmax() == 2  # a wrong given label is corrected
    assert torch.allclose(q.sum(1), torch.ones(2))
    # the closed form of the symmetric inverse: p_c = (p~_c - r/(K-1)) / (1 - r K/(K-1)), clipped, renormalised
    soft = torch.tensor([[0.5, 0.3, 0.2]])
    back = ((soft - 0.15) / (1 - 0.3 * 3 / 2)).clamp_min(1e-4)
    back = back / back.sum()
    lik = torch.tensor([[0.15, 0.15, 0.7]])
    assert torch.allclose(noisy_label_posterior(torch.tensor([2]), soft, t, denoise=True),
                          back * lik / (back * lik).sum(), atol=1e-6)
    with pytest.raises(ValueError, match="noise rate must be in"):
        symmetric_transition(3, 0.7)
    with pytest.raises(ValueError, match="must be 3 x 3"):
        noisy_label_posterior(given, refined, torch.eye(4), denoise=False)


def _pairflip_rows(clean: torch.Tensor, rate: float, num_classes: int) -> torch.Tensor:
    """What a refinery sure of each image's true class predicts after fitting labels with pair-flip noise."""
    rows = torch.zeros(len(clean), num_classes)
    rows[torch.arange(len(clean)), clean] = 1 - rate
    rows[torch.arange(len(clean)), (clean + 1) % num_classes] += rate
    return rows


def test_noise_transition_estimate_class_by_class():
    from labelrefinery.noise import estimate_noise_transition, largest_transitions, noisy_label_posterior

    clean = torch.arange(1000) % 10
    given = torch.where(torch.arange(1000) % 100 < 30, (clean + 1) % 10, clean)  # 30% pair flips
    t = estimate_noise_transition(given, _pairflip_rows(clean, 0.3, 10))
    expected = 0.7 * torch.eye(10) + 0.3 * torch.roll(torch.eye(10), 1, dims=1)
    assert torch.allclose(t, expected, atol=1e-6)
    assert all(y == (c + 1) % 10 and v == 0.3 for c, y, v in largest_transitions(t, 3))
    # symmetric noise reads as the symmetric matrix
    sym = _noisy_rows(clean, 0.4, 10)
    given_sym = torch.where(torch.arange(1000) % 100 < 40, (clean + 3) % 10, clean)
    assert torch.allclose(estimate_noise_transition(given_sym, sym),
                          0.6 * torch.eye(10) + 0.4 / 9 * (1 - torch.eye(10)), atol=1e-6)
    # memorised labels: nothing to estimate; an unsure refinery disputing 2% of labels is capped at 2%
    assert torch.equal(estimate_noise_transition(given, torch.eye(10)[clean]), torch.eye(10))
    unsure = estimate_noise_transition(torch.where(torch.arange(1000) < 20, (clean + 1) % 10, clean),
                                       _pairflip_rows(clean, 0.4, 10))
    assert float((1 - unsure.diagonal()).mean()) == pytest.approx(0.02, abs=1e-6)
    from labelrefinery.noise import classwise_summary
    assert classwise_summary(torch.where(torch.arange(1000) < 20, (clean + 1) % 10, clean),
                             _pairflip_rows(clean, 0.4, 10))["capped"]  # the summary says it was capped
    assert not classwise_summary(given, _pairflip_rows(clean, 0.3, 10))["capped"]  # read as it is
    # the posterior with the estimate corrects a pair-flipped label, which symmetric noise cannot
    q = noisy_label_posterior(torch.tensor([5]), _pairflip_rows(torch.tensor([4]), 0.3, 10), t, denoise=True)
    assert q.argmax() == 4 and q[0, 4] > 0.99
    # a singular estimate (two classes' rows alike) still gives probability rows, not an error
    singular = t.clone()
    singular[1] = singular[0]
    q = noisy_label_posterior(given[:20], _pairflip_rows(clean[:20], 0.3, 10), singular, denoise=True)
    assert torch.isfinite(q).all() and torch.allclose(q.sum(1), torch.ones(20))


def test_suggestion_precision_counts_each_relabelling_pair():
    """Per (given, suggested) pair: how many images and the share whose true class is the suggestion."""
    from labelrefinery.noise.quality import suggestion_precision

    given = np.array([0, 0, 0, 1, 1, 2])
    clean = np.array([1, 1, 0, 0, 1, 2])
    probs = np.eye(3)[[1, 1, 1, 0, 1, 2]]  # suggests 0->1 three times (two right), 1->0 once (right)
    assert suggestion_precision(given, probs, clean) == [
        {"given": 0, "suggested": 1, "count": 3, "precision": pytest.approx(2 / 3)},
        {"given": 1, "suggested": 0, "count": 1, "precision": 1.0}]
    assert suggestion_precision(given, np.eye(3)[given], clean) == []


def test_noise_concentration_tells_pair_flips_from_symmetric_noise():
    """1 for pair flips (all of a class's wrong labels go to one class), 1 / (K - 1) for symmetric noise, 0 for
    none; unchanged by shrinking towards the identity."""
    from labelrefinery.noise import noise_concentration, symmetric_transition

    given = torch.arange(1000) % 10
    pair = 0.7 * torch.eye(10) + 0.3 * torch.roll(torch.eye(10), 1, dims=1)
    assert noise_concentration(given, pair) == pytest.approx(1.0)
    assert noise_concentration(given, symmetric_transition(10, 0.4)) == pytest.approx(1 / 9)
    assert noise_concentration(given, torch.eye(10)) == 0.0
    half = torch.eye(10) + 0.5 * (pair - torch.eye(10))
    assert noise_concentration(given, half) == pytest.approx(1.0)


def test_evidence_takes_classwise_only_for_concentrated_noise(caplog):
    """--noise-prior evidence: classwise needs both a class-by-class estimate 3 points above the symmetric one
    and wrong labels that concentrate on one other class; symmetric noise with R1's own confusions on top
    (class by class 44% against 40%, concentration 0.2) stays auto."""
    from types import SimpleNamespace

    from labelrefinery.noisemodel import noise_model
    from labelrefinery.config import parse_noise_prior

    def chosen(symmetric, rate, concentration):
        summary = {"symmetric_noise_estimate": symmetric,
                   "classwise_noise_estimate": {"rate": rate, "concentration": concentration}}
        exp = SimpleNamespace(cfg=SimpleNamespace(refinement=SimpleNamespace(prior=parse_noise_prior("evidence"))),
                              dataset=SimpleNamespace(trusted=None),
                              run_dir=SimpleNamespace(read_summary=lambda seed, g: summary))
        return noise_model(exp, 0, 2)

    assert chosen(0.40, 0.44, 0.2) == "auto"  # symmetric 40%: R1's confusions lift the class-wise estimate
    assert chosen(0.01, 0.30, 0.95) == "classwise"  # pair flips
    assert chosen(0.001, 0.013, 0.9) == "auto"  # clean labels: concentrated, but no more noise than symmetric
    from labelrefinery.errors import RunDirError
    with pytest.raises(RunDirError, match="older version"):
        chosen(0.1, 0.2, None)


def test_a_given_label_tied_with_the_top_class_is_not_disputed():
    """float16 rows tie now and then: the given label tied for the top stands, whatever the class order."""
    from labelrefinery.report.labelissues import issue_rows
    from labelrefinery.noise import suggested_labels
    from labelrefinery.noise import disputes

    probs = np.array([[0.4, 0.4, 0.2], [0.4, 0.4, 0.2], [0.5, 0.3, 0.2]], dtype=np.float32)
    given = np.array([1, 0, 1])
    assert disputes(torch.from_numpy(given), torch.from_numpy(probs)).tolist() == [False, False, True]
    assert label_statistics(given, probs)["disputed"] == pytest.approx(1 / 3)
    assert suggested_labels(given, probs).tolist() == [1, 0, 0]
    rows = issue_rows(probs, given, np.arange(3), ["a", "b", "c"])
    assert [r["index"] for r in rows] == [2]
    every = issue_rows(probs, given, np.arange(3), ["a", "b", "c"], include_all=True)
    assert {r["index"]: r["suggested_label"] for r in every} == {0: "b", 1: "a", 2: "a"}


def test_an_estimate_of_no_noise_leaves_the_refined_labels_as_they_are():
    """auto reading 0, or classwise reading T = I (an R1 that memorised its labels): no posterior, as with
    --noise-prior 0; a non-zero estimate gives its matrix."""
    from types import SimpleNamespace

    from labelrefinery.noisemodel import noise_transition
    from labelrefinery.noise import symmetric_transition

    from labelrefinery.config import parse_noise_prior

    def exp(prior, estimate=0.0):
        return SimpleNamespace(cfg=SimpleNamespace(refinement=SimpleNamespace(prior=parse_noise_prior(prior))),
                               dataset=SimpleNamespace(train=SimpleNamespace(num_classes=10), trusted=None),
                               run_dir=SimpleNamespace(read_summary=lambda seed, g: {"symmetric_noise_estimate":
                                                                                       estimate}))

    labels = torch.arange(100) % 10
    data = SimpleNamespace(seed=0, views=SimpleNamespace(views=torch.zeros(100, dtype=torch.long), labels=labels))
    assert noise_transition(exp("0"), data, "none") is None
    assert noise_transition(exp("auto", 0.0), data, "auto") is None
    assert torch.equal(noise_transition(exp("auto", 0.2), data, "auto"), symmetric_transition(10, 0.2))
    assert noise_transition(exp("classwise"), data, "classwise", torch.eye(10)[labels]) is None
    assert noise_transition(exp("classwise"), data, "classwise", _pairflip_rows(labels, 0.3, 10)) is None  # disputes nothing
    flipped = torch.where(torch.arange(100) < 30, (labels + 1) % 10, labels)
    data.views.labels = flipped
    t = noise_transition(exp("classwise"), data, "classwise", _pairflip_rows(labels, 0.3, 10))
    assert t is not None and t[0, 1] == pytest.approx(0.3, abs=1e-6)


def test_instance_dependent_noise_moves_the_most_ambiguous_share_of_every_class_to_its_look_alike():
    """idn:P: exactly round(P n_c) images of each class move, to another class; the images that move are the
    ones a class-mean classifier finds ambiguous; deterministic; the streamed case is refused."""
    ds = load_dataset("digits")
    labels, images = ds.train.labels, ds.train.images
    noise = inject_label_noise(labels, "idn:0.3", 10, label_noise_generator(), images)
    for c in range(10):
        members = labels == c
        assert int(noise.flipped[members].sum()) == round(0.3 * int(members.sum()))
    assert not (noise.noisy[noise.flipped] == labels[noise.flipped]).any()
    again = inject_label_noise(labels, "idn:0.3", 10, label_noise_generator(), images)
    assert torch.equal(again.noisy, noise.noisy)
    # independent check of "ambiguous": distance to the nearest other class mean minus to the own class mean
    x = images.flatten(1).double()
    means = torch.stack([x[labels == c].mean(0) for c in range(10)])
    d = torch.cdist(x, means)
    own = d.gather(1, labels.view(-1, 1)).squeeze(1)
    gap = d.scatter(1, labels.view(-1, 1), float("inf")).min(1).values - own
    assert gap[noise.flipped].median() < gap[~noise.flipped].median()
    # where they go: mostly to the class whose mean is nearest among the others (the look-alike)
    nearest_other = d.scatter(1, labels.view(-1, 1), float("inf")).argmin(1)
    assert (noise.noisy[noise.flipped] == nearest_other[noise.flipped]).float().mean() > 0.5
    with pytest.raises(ConfigError, match="--data-in-memory yes"):
        inject_label_noise(labels, "idn:0.3", 10, label_noise_generator(), None)
    assert inject_label_noise(labels, "idn:0", 10, label_noise_generator(), images).flipped.sum() == 0


def test_swap_noise_swaps_within_pairs_of_similar_classes():
    """swap:P: classes paired by the discriminant's confusions, each class in one pair; every flipped label is
    its class's partner, both ways, at rate P within binomial error; reproducible; P >= 0.5 and streamed data
    refused."""
    from labelrefinery.noise.inject import similar_class_pairs
    ds = load_dataset("digits")
    labels, images = ds.train.labels, ds.train.images
    pairs = similar_class_pairs(images, labels, 10)
    assert sorted(c for pair in pairs for c in pair) == list(range(10)) and all(a < b for a, b in pairs)
    noise = inject_label_noise(labels, "swap:0.25", 10, label_noise_generator(), images)
    partner = {a: b for a, b in pairs} | {b: a for a, b in pairs}
    moved = noise.flipped.nonzero().squeeze(1)
    assert all(int(noise.noisy[i]) == partner[int(labels[i])] for i in moved)
    rate = float(noise.flipped.float().mean())
    assert abs(rate - 0.25) < 4 * math.sqrt(0.25 * 0.75 / len(labels))
    assert {int(labels[i]) for i in moved} == set(range(10))  # both sides of every pair
    again = inject_label_noise(labels, "swap:0.25", 10, label_noise_generator(), images)
    assert torch.equal(again.noisy, noise.noisy)
    with pytest.raises(ConfigError, match="a swap beyond 1/2"):
        inject_label_noise(labels, "swap:0.5", 10, label_noise_generator(), images)
    with pytest.raises(ConfigError, match="--data-in-memory yes"):
        inject_label_noise(labels, "swap:0.2", 10, label_noise_generator(), None)
    odd = labels < 9  # nine classes: one is left without a partner and keeps its labels
    three = similar_class_pairs(images[odd], labels[odd], 9)
    assert len(three) == 4


@needs_fashion_mnist
def test_swap_pairs_on_fashion_mnist_are_the_classes_annotators_mix_up():
    """The pairs on Fashion-MNIST's test split: Sandal/Sneaker, T-shirt/Shirt, Trouser/Dress, Pullover/Coat,
    Bag/Ankle boot (the confusions BENCHMARKS.md's annotator-like noise shows)."""
    from labelrefinery.noise.inject import similar_class_pairs
    test = load_dataset("fashion-mnist").test
    assert similar_class_pairs(test.images, test.labels, 10) == [(5, 7), (0, 6), (1, 3), (2, 4), (8, 9)]


def test_wilson_interval_matches_the_textbook_values():
    """Brown, Cai & DasGupta 2001: 0 of 10 -> [0, 0.278]; 5 of 10 -> [0.237, 0.763]; it holds the share."""
    from labelrefinery.noise import wilson_interval

    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    low, high = wilson_interval(84, 240)
    assert low < 84 / 240 < high and high - low < 0.13


def test_trusted_estimate_counts_the_verified_labels():
    from labelrefinery.noise import trusted_noise_estimate, trusted_transition

    verified = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 2, 2])
    given = torch.tensor([0, 0, 0, 1, 1, 1, 1, 1, 2, 0])
    t = trusted_transition(given, verified, 3)
    # class 0: 3 kept + 1 pseudo-count, 1 to class 1 -> [4, 1, 0] / 5; class 2: [1, 0, 2] / 3
    assert torch.allclose(t[0], torch.tensor([0.8, 0.2, 0.0])) and torch.allclose(t[2], torch.tensor([1 / 3, 0, 2 / 3]))
    assert torch.allclose(t.sum(1), torch.ones(3))
    e = trusted_noise_estimate(given, verified, 3)
    assert e["rate"] == pytest.approx(0.2) and e["images"] == 10 and e["low"] < 0.2 < e["high"]
    assert e["largest"][0] == [2, 0, 0.5]  # 1 of class 2's 2 verified images given as 0: the share as counted
    assert e["largest"][1] == [0, 1, 0.25]


def test_trusted_images_are_the_validation_split_with_their_verified_labels(tmp_path):
    """--trusted N: the same N images for every seed, their clean labels, never trained on; --train-size draws
    from the rest; the file form reads indices and class names; bad files are refused naming the line."""
    from labelrefinery.data import DataError
    from labelrefinery.protocol import seed_split, with_given_labels

    cfg = resolve_config("quick", {"dataset": "digits", "label_noise": "idn:0.3", "trusted": "60"})
    ds, noise = with_given_labels(load_dataset("digits"), cfg)
    t = ds.trusted
    assert len(t.indices) == 60 and torch.equal(t.verified, noise.clean[t.indices])
    assert torch.equal(t.given, noise.noisy[t.indices]) and torch.equal(ds.train.labels[t.indices], t.verified)
    for seed in (0, 1):
        data = seed_data(ds, cfg, seed, torch.device("cpu"), noise)
        assert torch.equal(data.val_idx, t.indices) and torch.equal(data.val_labels, noise.clean[t.indices])
        assert not torch.isin(data.train_idx, t.indices).any() and len(data.train_idx) == len(ds.train) - 60
    small = resolve_config("quick", {"dataset": "digits", "label_noise": "idn:0.3", "trusted": "60", "train_size": 500})
    train_idx, val_idx = seed_split(with_given_labels(load_dataset("digits"), small)[0], small, 0)
    assert len(train_idx) == 500 and torch.equal(val_idx, t.indices)

    listed = tmp_path / "verified.csv"
    rows = ["index,label"] + [f"{i},{ds.classes[i % 10]}" for i in range(0, 40)] + ["41,3"]
    listed.write_text("\n".join(rows) + "\n")
    from_file = resolve_config("quick", {"dataset": "digits", "trusted": str(listed)})
    fds, _ = with_given_labels(load_dataset("digits"), from_file)
    assert fds.trusted.indices.tolist() == [*range(40), 41]
    assert fds.train.labels[:40].tolist() == [i % 10 for i in range(40)] and int(fds.train.labels[41]) == 3
    for bad, match in ((["index,label", "5,3", "5,4"], "line 3: image '5' is listed twice"),
                       (["index,label", "5,cat"], "line 2: label 'cat' is not one of"),
                       (["index,label", "99999,3"], "line 2: index 99999 is outside"),
                       (["file,label", "5,3"], "needs a header line"),
                       (["index,label", "a.png,3"], "this dataset has no files")):
        listed.write_text("\n".join(bad) + "\n")
        with pytest.raises(DataError, match=match):
            with_given_labels(load_dataset("digits"), from_file)
    listed.write_bytes(b"index,label\n1,\xff\n")
    with pytest.raises(DataError, match="not UTF-8"):
        with_given_labels(load_dataset("digits"), from_file)
    with pytest.raises(ConfigError, match="--trusted 60 takes the true labels"):
        resolve_config("quick", {"dataset": "digits", "trusted": "60"})
    listed.write_text("index,label\n1,3\n")
    with pytest.raises(ConfigError, match="needs from 20 to"):
        with_given_labels(load_dataset("digits"), from_file)
