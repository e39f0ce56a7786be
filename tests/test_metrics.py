"""§4.1 / §4.7 metrics against scikit-learn and hand computations."""
import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from replication.metrics import (accuracy, balanced_accuracy, concordance, confusion_matrix,
                                 summarize_predictions)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_accuracy_balanced_accuracy_confusion_vs_sklearn(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 7, 200)
    y[:5] = 3  # skewed
    p = np.where(rng.random(200) < 0.6, y, rng.integers(0, 7, 200))
    assert accuracy(y, p) == pytest.approx(skm.accuracy_score(y, p))
    assert balanced_accuracy(y, p) == pytest.approx(skm.balanced_accuracy_score(y, p))
    np.testing.assert_array_equal(confusion_matrix(y, p, 7), skm.confusion_matrix(y, p, labels=range(7)))


def test_balanced_accuracy_ignores_classes_absent_from_labels():
    y = np.array([0, 0, 1, 1, 1])
    p = np.array([0, 2, 1, 1, 0])  # class 2 predicted but never true
    assert balanced_accuracy(y, p) == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_confusion_matrix_refuses_labels_outside_the_classes():
    """np.bincount would count y_pred = 2 of 2 classes in the next row's cell, or fail on -1 (MISSING)."""
    with pytest.raises(ValueError, match=r"y_pred\[0\] = 2 is not a class index 0\.\.1"):
        confusion_matrix([0, 1], [2, 1], 2)
    with pytest.raises(ValueError, match=r"y_true\[1\] = -1 is not a class index"):
        confusion_matrix([0, -1], [1, 1], 2)
    with pytest.raises(ValueError, match="equally long"):
        confusion_matrix([0, 1], [1], 2)


def _predictions(rows):
    return pd.DataFrame(rows, columns=["path", "dataset", "task", "label", "pred"])


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_summary_averages_follow_section_4():
    rows = []
    # age: utkface 3/4, fairface 1/2, vggface2 0/2 (excluded from the average)
    for i, (l, p) in enumerate([(1, 1), (2, 2), (3, 3), (4, 0)]):
        rows.append((f"u{i}", "utkface", "age", l, p))
    for i, (l, p) in enumerate([(1, 1), (2, 3)]):
        rows.append((f"f{i}", "fairface", "age", l, p))
    for i, (l, p) in enumerate([(5, 4), (6, 2)]):
        rows.append((f"v{i}", "vggface2", "age", l, p))
    # gender: 1/1, 2/2, 1/2 ; emotion rafdb 2/3
    rows += [("u0", "utkface", "gender", 0, 0), ("f0", "fairface", "gender", 1, 1),
             ("f1", "fairface", "gender", 0, 0), ("v0", "vggface2", "gender", 1, 1),
             ("v1", "vggface2", "gender", 0, 1)]
    rows += [("r0", "rafdb", "emotion", 3, 3), ("r1", "rafdb", "emotion", 6, 6), ("r2", "rafdb", "emotion", 1, 0)]
    res = summarize_predictions(_predictions(rows))
    age = res["tasks"]["age"]
    assert age["datasets"]["utkface"] == {"n": 4, "accuracy": 0.75, "balanced_accuracy": 0.75}
    assert age["datasets"]["vggface2"]["accuracy"] == 0.0
    assert age["average_accuracy"] == pytest.approx((0.75 + 0.5) / 2)  # mean over datasets, no VGGFace2
    assert age["average_over"] == ["utkface", "fairface"]
    # the balanced-accuracy average leaves VGGFace2 out as well (utkface 3/4 by class, fairface (1 + 0) / 2)
    assert age["average_balanced_accuracy"] == pytest.approx((0.75 + 0.5) / 2)
    gender = res["tasks"]["gender"]
    assert gender["average_accuracy"] == pytest.approx((1 + 1 + 0.5) / 3)  # not pooled (4/5)
    assert gender["datasets"]["vggface2"]["balanced_accuracy"] == pytest.approx(0.5)
    emotion = res["tasks"]["emotion"]
    assert emotion["average_accuracy"] == pytest.approx(2 / 3)
    assert emotion["average_balanced_accuracy"] == pytest.approx(
        skm.balanced_accuracy_score([3, 6, 1], [3, 6, 0]))
    assert res["overall_average_accuracy"] == pytest.approx(((0.75 + 0.5) / 2 + 2.5 / 3 + 2 / 3) / 3)
    # single-task run: no overall average
    only_gender = summarize_predictions(_predictions([r for r in rows if r[2] == "gender"]))
    assert set(only_gender["tasks"]) == {"gender"} and "overall_average_accuracy" not in only_gender


def test_a_test_set_without_predictions_is_left_out_and_listed():
    # gender on UTKFace 1/2 and FairFace 2/2, no VGGFace2 rows: replication.tables notes the gap
    res = summarize_predictions(_predictions([
        ("u0", "utkface", "gender", 0, 0), ("u1", "utkface", "gender", 1, 0),
        ("f0", "fairface", "gender", 1, 1), ("f1", "fairface", "gender", 0, 0)]))
    gender = res["tasks"]["gender"]
    assert gender["average_over"] == ["utkface", "fairface"] and "vggface2" not in gender["datasets"]
    assert gender["average_accuracy"] == pytest.approx((0.5 + 1.0) / 2)


def test_overall_average_reproduces_thesis_table_4_12():
    # Tables 4.8-4.10, DoRA multi-task: per-dataset accuracies -> Table 4.12 row (63.53, 97.49, 84.07)
    per = {"age": {"utkface": 63.34, "fairface": 63.73, "vggface2": 61.69},
           "gender": {"utkface": 96.90, "fairface": 97.57, "vggface2": 98.00},
           "emotion": {"rafdb": 91.21}}
    rows = []
    for task, sets in per.items():
        for ds, acc in sets.items():
            n_right = round(acc * 100)  # 10000 samples each, acc% correct
            labels = np.zeros(10000, dtype=int)
            preds = np.where(np.arange(10000) < n_right, 0, 1)
            rows += [(f"{ds}{i}", ds, task, l, p) for i, (l, p) in enumerate(zip(labels, preds))]
    res = summarize_predictions(_predictions(rows))
    assert round(100 * res["tasks"]["age"]["average_accuracy"], 2) == 63.53
    assert round(100 * res["tasks"]["gender"]["average_accuracy"], 2) == 97.49
    assert abs(100 * res["overall_average_accuracy"] - 84.07) < 0.015


def test_concordance_per_task_and_dataset():
    a = _predictions([("x", "fairface", "age", 1, 1), ("y", "fairface", "age", 2, 3),
                      ("x", "fairface", "gender", 0, 0), ("z", "rafdb", "emotion", 1, 4)])
    b = _predictions([("y", "fairface", "age", 2, 3), ("x", "fairface", "age", 1, 2),
                      ("x", "fairface", "gender", 0, 0), ("z", "rafdb", "emotion", 1, 4)])
    c = concordance(a, b).set_index(["task", "dataset"])
    assert c.loc[("age", "fairface"), "concordance"] == 0.5 and c.loc[("age", "fairface"), "n"] == 2
    assert c.loc[("gender", "fairface"), "concordance"] == 1.0
    assert c.loc[("emotion", "rafdb"), "concordance"] == 1.0
    with pytest.raises(ValueError, match="different samples"):
        concordance(a, b.iloc[:2])


def test_empty_inputs_are_refused():
    """No samples is an error, not a NaN accuracy (numpy's mean of nothing) in a results table."""
    with pytest.raises(ValueError, match="non-empty"):
        accuracy([], [])
    with pytest.raises(ValueError, match="no predictions for task 'age'"):
        summarize_predictions(_predictions([("u0", "utkface", "gender", 0, 0)]), tasks=("age",))


def test_balanced_accuracy_averages_and_the_overall_average_differ_from_the_plain_ones():
    """Every set below has accuracy != balanced accuracy, so an average built from the wrong one shows: the
    §4 average balanced accuracy is the mean of the per-dataset balanced accuracies (VGGFace2 left out of age),
    and the overall average is the mean of the task *accuracy* averages (scikit-learn as the oracle)."""
    sets = {("age", "utkface"): ([0, 0, 0, 1], [0, 0, 0, 0]), ("age", "fairface"): ([2, 3, 3], [2, 2, 3]),
            ("age", "vggface2"): ([4, 5, 5], [4, 4, 5]),
            ("gender", "utkface"): ([0, 0, 0, 1], [0, 0, 0, 0]), ("gender", "fairface"): ([1, 1, 0], [1, 1, 1]),
            ("gender", "vggface2"): ([0, 1, 1, 1], [0, 0, 1, 1]),
            ("emotion", "rafdb"): ([3, 3, 3, 6], [3, 3, 3, 3])}
    rows = [(f"{ds}{i}", ds, task, label, pred) for (task, ds), (labels, preds) in sets.items()
            for i, (label, pred) in enumerate(zip(labels, preds))]
    res = summarize_predictions(_predictions(rows))
    averaged = {"age": ("utkface", "fairface"), "gender": ("utkface", "fairface", "vggface2"), "emotion": ("rafdb",)}
    acc_avg = {}
    for task, datasets in averaged.items():
        accs = [skm.accuracy_score(*sets[task, ds]) for ds in datasets]
        bals = [skm.balanced_accuracy_score(*sets[task, ds]) for ds in datasets]
        assert abs(np.mean(accs) - np.mean(bals)) > 0.05  # the two averages are told apart here
        assert res["tasks"][task]["average_balanced_accuracy"] == pytest.approx(np.mean(bals))
        assert res["tasks"][task]["average_accuracy"] == pytest.approx(np.mean(accs))
        acc_avg[task] = np.mean(accs)
    assert res["tasks"]["age"]["datasets"]["vggface2"]["balanced_accuracy"] == pytest.approx(
        skm.balanced_accuracy_score(*sets["age", "vggface2"]))
    assert res["overall_average_accuracy"] == pytest.approx(np.mean(list(acc_avg.values())))
