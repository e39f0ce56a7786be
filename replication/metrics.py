"""Evaluation metrics of thesis §4.1 and §4.7.

* ``accuracy`` and ``balanced_accuracy`` (mean per-class recall over the classes present in the
  labels, as scikit-learn computes it; §4.1's 1/C_k sum over classes is undefined for an absent class).
* ``summarize_predictions(predictions)``: per task, per test set n / accuracy / balanced accuracy, and the §4
  "average accuracy": the mean of the per-dataset accuracies (not the accuracy of the pooled sets),
  leaving VGGFace2 out of the age average. A test set without predictions is left out of the mean;
  ``average_over`` lists the sets averaged (replication.tables notes the missing ones). The overall
  average is the mean of the three task averages. Within rounding, this gives every overall average
  the thesis prints in Tables 4.7, 4.11 and 4.12 from the task averages of its row (e.g. DoRA
  multi-task (91.21 + 63.53 + 97.49) / 3 = 84.08 ~ 84.07), and the task averages from the per-test-set
  accuracies of Tables 4.1, 4.4–4.6 and 4.8–4.10, except these printed values (each noted on its
  cell in replication.thesis): the zero-shot 69.61 of Tables 4.2, 4.12 and 4.14 keeps VGGFace2 in the
  age mean ((45.58 + 96.67 + 66.57) / 3; 70.20 without it, as in Table 4.11); LP's overall 78.76 in
  Table 4.12 (its row gives 81.24); LP's and AP's single-task age averages 61.28 and 61.47 (Tables
  4.5 and 4.11; Table 4.5's cells give 61.625 and 61.58, and 61.28 is the mean with Table 4.9's LP
  FairFace 61.00); Table 4.12's emotion LP 84.91 and FT4 88.43 (Table 4.8: 84.82, 88.42; FT4's 88.43
  is also Table 4.7's); and Table 4.14's FT4 80.56 and MTLoRA 83.89 (Table 4.12: 82.94, 83.86).
* ``confusion_matrix`` (rows = true class, columns = predicted, §4.7) and ``concordance`` between two
  runs' predictions (Table 4.15: share of samples with equal predictions).

Predictions are DataFrames with columns path, dataset, task, label, pred (one row per sample and task,
a run folder's predictions.csv, runs.py). Values are fractions in [0, 1].
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from replication.labels import AVERAGE_EXCLUDES, TASKS, TEST_SETS


def accuracy(y_true, y_pred) -> float:
    """§4.1 correct predictions / samples."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.shape != y_pred.shape or y_true.size == 0:
        raise ValueError(f"need equally long non-empty label/prediction arrays, got {y_true.shape} and {y_pred.shape}")
    return float((y_true == y_pred).mean())


def balanced_accuracy(y_true, y_pred) -> float:
    """§4.1 mean over classes of TP_i / (TP_i + FN_i), over the classes that occur in ``y_true``."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    accuracy(y_true, y_pred)  # same shape checks
    recalls = [float((y_pred[y_true == c] == c).mean()) for c in np.unique(y_true)]
    return float(np.mean(recalls))


def confusion_matrix(y_true, y_pred, num_classes: int) -> np.ndarray:
    """(C, C) int64 counts, entry [i, j] = samples of true class i predicted as j (§4.7)."""
    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    accuracy(y_true, y_pred)  # same shape checks
    for name, y in (("y_true", y_true), ("y_pred", y_pred)):
        outside = (y < 0) | (y >= num_classes)
        if outside.any():  # bincount would put them in another cell (or fail on a negative index)
            raise ValueError(f"{name}[{int(np.argmax(outside))}] = {y[outside][0]} is not a class index "
                             f"0..{num_classes - 1}")
    return np.bincount(y_true * num_classes + y_pred, minlength=num_classes**2).reshape(num_classes, num_classes)


def _scores(frame: pd.DataFrame) -> dict:
    return {"n": int(len(frame)),
            "accuracy": accuracy(frame["label"], frame["pred"]),
            "balanced_accuracy": balanced_accuracy(frame["label"], frame["pred"])}


def dataset_results(predictions: pd.DataFrame, task: str, datasets: Sequence[str],
                    excludes: Sequence[str] = ()) -> dict:
    """Scores of one task on each of ``datasets`` present in ``predictions`` and their §4 averages."""
    rows = predictions[predictions["task"] == task]
    per_dataset = {ds: _scores(rows[rows["dataset"] == ds]) for ds in datasets if (rows["dataset"] == ds).any()}
    averaged = [ds for ds in per_dataset if ds not in excludes]
    if not averaged:
        raise ValueError(f"no predictions for task {task!r} on any of {list(datasets)}")
    return {"datasets": per_dataset,
            "average_accuracy": float(np.mean([per_dataset[ds]["accuracy"] for ds in averaged])),
            "average_balanced_accuracy": float(np.mean([per_dataset[ds]["balanced_accuracy"] for ds in averaged])),
            "average_over": averaged}


def summarize_predictions(predictions: pd.DataFrame, tasks: Sequence[str] | None = None,
                 test_sets: Mapping[str, Sequence[str]] = TEST_SETS,
                 excludes: Mapping[str, Sequence[str]] = AVERAGE_EXCLUDES) -> dict:
    """§4 results of one run: {"tasks": {task: dataset_results}, "overall_average_accuracy": mean of the
    task averages} (the overall average is only given when all three tasks are evaluated)."""
    tasks = tuple(tasks or [t for t in TASKS if (predictions["task"] == t).any()])
    per_task = {t: dataset_results(predictions, t, test_sets[t], excludes.get(t, ())) for t in tasks}
    results = {"tasks": per_task}
    if set(tasks) == set(TASKS):
        results["overall_average_accuracy"] = float(np.mean([per_task[t]["average_accuracy"] for t in TASKS]))
    return results


def concordance(a: pd.DataFrame, b: pd.DataFrame) -> pd.DataFrame:
    """Table 4.15 C-index = equal predictions / samples, per (task, dataset), of two runs' predictions.

    Rows are matched on (path, dataset, task); both runs must have predicted the same samples."""
    keys = ["path", "dataset", "task"]
    merged = a[keys + ["pred"]].merge(b[keys + ["pred"]], on=keys, how="outer", suffixes=("_a", "_b"),
                                      indicator=True)
    unmatched = merged[merged["_merge"] != "both"]
    if len(unmatched):
        first = unmatched.iloc[0]
        raise ValueError(f"the two prediction sets cover different samples ({len(unmatched)} unmatched, "
                         f"e.g. {first['path']} / {first['task']} only in {first['_merge']})")
    merged["equal"] = merged["pred_a"] == merged["pred_b"]
    out = merged.groupby(["task", "dataset"], sort=False).agg(n=("equal", "size"), concordance=("equal", "mean"))
    return out.reset_index()
