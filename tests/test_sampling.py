"""§3.2 class-balanced sampling and §3.7.2 emotion replication."""
import numpy as np
import pytest
import torch
from sklearn.utils.class_weight import compute_class_weight
from torch.utils.data import WeightedRandomSampler

from replication.sampling import (BalancedSampler, class_balanced_weights, emotion_replication_factor,
                                  expected_class_shares, expected_task_shares, replicate_emotion)


def test_weights_by_hand():
    labels = {"age": np.array([0, 0, 0, 1, -1, -1]),
              "gender": np.array([0, 1, 1, 1, 0, -1]),
              "emotion": np.array([-1, -1, -1, -1, 2, 5])}
    # class weights n / (C * n_c): age {0: 4/(2*3), 1: 4/(2*1)}, gender {0: 5/(2*2), 1: 5/(2*3)},
    # emotion {2: 2/(2*1), 5: 2/(2*1)}
    a0, a1, g0, g1, e = 4 / 6, 2.0, 5 / 4, 5 / 6, 1.0
    expected = [(a0 + g0) / 2, (a0 + g1) / 2, (a0 + g1) / 2, (a1 + g1) / 2, (g0 + e) / 2, e]
    w = class_balanced_weights(labels)
    assert w.dtype == np.float64
    np.testing.assert_allclose(w, expected, rtol=1e-12)


def test_class_weights_equal_sklearn_balanced():
    rng = np.random.default_rng(0)
    y = rng.choice(9, 300, p=np.linspace(1, 3, 9) / np.linspace(1, 3, 9).sum())
    w = class_balanced_weights({"age": y})  # one task: sample weight = its class weight
    sk = compute_class_weight("balanced", classes=np.unique(y), y=y)
    np.testing.assert_allclose(w, sk[np.searchsorted(np.unique(y), y)], rtol=1e-12)


def test_unlabelled_samples_get_zero_weight_and_bad_input_is_rejected():
    w = class_balanced_weights({"age": np.array([0, -1, 1]), "gender": np.array([1, -1, 0])})
    assert w[1] == 0.0
    with pytest.raises(ValueError, match="equal length"):
        class_balanced_weights({"age": np.array([0, 1]), "gender": np.array([0])})
    with pytest.raises(ValueError, match="integers"):
        class_balanced_weights({"age": np.array([0.5, 1.0])})


def _synthetic_training_set(seed=0, n=3000):
    """Three groups like the thesis's training set: age+gender, emotion+gender, gender only."""
    rng = np.random.default_rng(seed)
    group = rng.choice(3, n, p=[0.8, 0.06, 0.14])
    age = np.where(group == 0, rng.choice(9, n, p=np.array([2, 11, 12, 22, 18, 13, 11, 8, 3]) / 100), -1)
    gender = rng.integers(0, 2, n)
    emotion = np.where(group == 1, rng.choice(7, n, p=np.array([10, 2, 6, 40, 14, 6, 22]) / 100), -1)
    return {"age": age, "gender": gender, "emotion": emotion}


def test_expected_shares_match_weighted_random_sampler_monte_carlo():
    labels = _synthetic_training_set()
    w = class_balanced_weights(labels)
    exact = expected_class_shares(w, labels)
    torch.manual_seed(0)
    draws = np.concatenate([np.fromiter(WeightedRandomSampler(w, len(w)), dtype=np.int64) for _ in range(40)])
    for task, y in labels.items():
        drawn = y[draws]
        drawn = drawn[drawn != -1]
        mc = np.bincount(drawn, minlength=len(exact[task])) / len(drawn)
        np.testing.assert_allclose(mc, exact[task], atol=0.012)
        assert exact[task].sum() == pytest.approx(1.0)
    # balancing pulls rare classes up: the rarest age class is drawn far more than its raw 2%
    assert exact["age"][0] > 2 * np.mean(labels["age"][labels["age"] != -1] == 0)


def test_emotion_replication_reaches_a_third():
    labels = _synthetic_training_set(seed=1, n=6000)
    has_e = labels["emotion"] != -1
    k = emotion_replication_factor(has_e)
    n_e, n_other = has_e.sum(), (~has_e).sum()
    assert k == min(range(1, 100), key=lambda c: abs(c * n_e / (c * n_e + n_other) - 1 / 3))  # brute force
    rows = replicate_emotion(has_e)
    assert len(rows) == (~has_e).sum() + k * has_e.sum()
    replicated = {t: y[rows] for t, y in labels.items()}
    assert abs((replicated["emotion"] != -1).mean() - 1 / 3) < 0.03
    # weights computed after replication keep the emotion draws at about a third (mean class weight 1)
    w = class_balanced_weights(replicated)
    assert abs(expected_task_shares(w, replicated)["emotion"] - 1 / 3) < 0.04
    assert emotion_replication_factor(np.ones(5, bool)) == 1  # emotion-only training: nothing to do


@pytest.mark.parametrize("n_emotion, n_other, copies", [
    (16, 48, 2),        # solves to 1.5 (1.4999... in floats): 2 copies give 40 %, 1 copy 25 %
    (40, 200, 3),       # solves to 2.5: 3 copies give 37.5 %, 2 copies 28.6 %
    (668, 892, 1),      # the demo's training set: emotion is already 43 %, never fewer than 1 copy
    (9215, 159147, 9),  # Table 3.2a's counts: solves to 8.64; 9 copies give 34.3 %, 8 copies 31.7 %
])
def test_emotion_copies_bring_the_share_nearest_a_third(n_emotion, n_other, copies):
    has_e = np.arange(n_emotion + n_other) < n_emotion
    assert emotion_replication_factor(has_e) == copies
    shares = {c: c * n_emotion / (c * n_emotion + n_other) for c in range(1, 50)}
    assert copies == min(shares, key=lambda c: abs(shares[c] - 1 / 3))


def test_balanced_sampler_is_deterministic_sharded_and_resumable():
    w = np.array([1.0, 2.0, 0.0, 4.0, 1.0, 3.0, 2.0])
    full = BalancedSampler(w, seed=5)
    full.set_epoch(2)
    everything = list(full)
    assert len(everything) == 7 and all(i != 2 for i, _ in everything)  # zero weight never drawn
    assert list(full) == everything  # same epoch, same draws
    full.set_epoch(3)
    assert list(full) != everything
    # two ranks split one global sequence (padded to 8 draws) without overlap of positions
    ranks = [BalancedSampler(w, seed=5, rank=r, world_size=2) for r in range(2)]
    for r in ranks:
        r.set_epoch(2)
    a, b = list(ranks[0]), list(ranks[1])
    assert len(a) == len(b) == 4
    # resuming mid-epoch yields exactly the remaining draws
    ranks[0].set_epoch(2, start=3)
    assert list(ranks[0]) == a[3:] and len(ranks[0]) == 1


def test_weights_reproduce_thesis_table_3_2_weighted_columns():
    """Table 3.2's class counts -> its "Weighted %" columns (only the joint gender split is assumed)."""
    age = [2935, 15699, 16032, 29784, 24462, 17976, 14413, 10618, 4828]
    emotion = [912, 218, 544, 3701, 1301, 556, 1983]
    n_total, n_age, n_emo = 168362, sum(age), sum(emotion)
    assert n_age == 136747 and n_emo == 9215
    # groups: age+gender (LAGENDA, FairFace), emotion+gender (RAF-DB), gender only (CelebA-HQ);
    # gender (48.79% male) is spread evenly over the groups since the thesis gives no joint counts
    a = np.concatenate([np.repeat(np.arange(9), age), np.full(n_total - n_age, -1)])
    e = np.concatenate([np.full(n_age, -1), np.repeat(np.arange(7), emotion), np.full(n_total - n_age - n_emo, -1)])
    g = np.zeros(n_total, dtype=np.int64)
    g[np.random.default_rng(0).permutation(n_total)[:86215]] = 1
    labels = {"age": a, "gender": g, "emotion": e}
    shares = expected_class_shares(class_balanced_weights(labels), labels)
    table_age = [6.63, 11.31, 11.36, 16.37, 14.56, 12.14, 10.89, 9.44, 7.31]
    table_emotion = [12.14, 8.44, 9.99, 26.85, 14.20, 10.25, 18.13]
    table_gender = [49.26, 50.74]
    np.testing.assert_allclose(100 * shares["age"], table_age, atol=0.15)
    np.testing.assert_allclose(100 * shares["emotion"], table_emotion, atol=0.4)  # thesis: 10-run Monte Carlo
    np.testing.assert_allclose(100 * shares["gender"], table_gender, atol=0.5)


def test_expected_task_shares_by_hand():
    """Share of the weight mass on samples carrying the task's label: not a mean weight per sample."""
    w = np.array([1.0, 3.0, 0.5, 0.5])
    labels = {"age": np.array([0, 1, -1, -1]), "emotion": np.array([-1, -1, 2, 4])}
    assert expected_task_shares(w, labels) == pytest.approx({"age": 4 / 5, "emotion": 1 / 5})


def test_emotion_replication_factor_rounds_and_never_drops_emotion():
    """k = round(share n_other / ((1 - share) n_e)), at least 1: (1/3) 100 / ((2/3) 40) = 1.25 -> 1 copy (not 2);
    with emotion already over a third (0.125 -> 0) the emotion rows are kept once, never dropped."""
    has_e = np.array([True] * 40 + [False] * 100)
    assert emotion_replication_factor(has_e) == 1
    assert emotion_replication_factor(np.array([True] * 40 + [False] * 140)) == 2  # 1.75 -> 2
    crowded = np.array([True] * 40 + [False] * 10)
    assert emotion_replication_factor(crowded) == 1
    np.testing.assert_array_equal(replicate_emotion(crowded), np.arange(50))


def test_ranks_interleave_the_single_process_draws():
    """Rank r of w takes draws r, r + w, ... of the one global sequence: with 8 weights and 2 ranks (no
    padding) the two ranks' draws interleaved are exactly the single-process draws, seeds included."""
    w = np.array([1.0, 2.0, 0.0, 4.0, 1.0, 3.0, 2.0, 5.0])
    single = BalancedSampler(w, seed=9)
    ranks = [BalancedSampler(w, seed=9, rank=r, world_size=2) for r in range(2)]
    for s in (single, *ranks):
        s.set_epoch(1)
    a, b = list(ranks[0]), list(ranks[1])
    assert [x for pair in zip(a, b) for x in pair] == list(single)
