"""Class counts per dataset and split: the distribution figures 2.8-2.13 and Table 3.2's
"Samples" / "%" columns (thesis §2.7, §3.2). Works on a manifest (``read_manifest``) or on
reader records (``records_frame``: ``prepare`` counts CelebA-HQ's official val folder this way for
Fig. 2.13b, since Table 3.1 does not use it and the manifest therefore lacks it).
"""
from __future__ import annotations

from typing import Iterable

import pandas as pd

from replication.labels import MISSING, TASKS

from .readers import Record


def records_frame(records: Iterable[Record]) -> pd.DataFrame:
    """Reader records as a manifest-like frame (split = the official split)."""
    return pd.DataFrame([(r.dataset, r.split, r.age, r.gender, r.emotion) for r in records],
                        columns=["dataset", "split", *TASKS])


def class_counts(df: pd.DataFrame) -> pd.DataFrame:
    """Long table: dataset, split, task, class_id, class_name, count, percent.

    Every class of a task appears (count 0 included) for each (dataset, split) that has at
    least one label of that task; percent is within (dataset, split, task).
    """
    rows = []
    for (dataset, split), group in df.groupby(["dataset", "split"], sort=True):
        for task, names in TASKS.items():
            labels = group[task][group[task] != MISSING]
            if labels.empty:
                continue
            counts = labels.value_counts()
            for class_id, name in enumerate(names):
                n = int(counts.get(class_id, 0))
                rows.append((dataset, split, task, class_id, name, n, 100.0 * n / len(labels)))
    return pd.DataFrame(rows, columns=["dataset", "split", "task", "class_id", "class_name", "count", "percent"])


def training_distribution(df: pd.DataFrame, split: str = "train") -> dict[str, pd.DataFrame]:
    """Table 3.2: per task, samples and % of each class over all training datasets together,
    plus ``"tasks"``: samples carrying each task's label and their share of all samples."""
    train = df[df["split"] == split]
    out = {}
    for task, names in TASKS.items():
        labels = train[task][train[task] != MISSING]
        counts = labels.value_counts()
        samples = [int(counts.get(i, 0)) for i in range(len(names))]
        total = max(sum(samples), 1)
        out[task] = pd.DataFrame({"class_name": names, "samples": samples,
                                  "percent": [100.0 * s / total for s in samples]})
    labelled = {task: int((train[task] != MISSING).sum()) for task in ("gender", "age", "emotion")}
    out["tasks"] = pd.DataFrame({"task": list(labelled), "samples": list(labelled.values()),
                                 "percent": [100.0 * n / max(len(train), 1) for n in labelled.values()]})
    return out
