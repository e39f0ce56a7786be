"""Class counts per dataset/split (Figs 2.8-2.13) and the Table 3.2 "Samples/%" columns."""
import numpy as np
import pandas as pd
import pytest

from replication import thesis
from replication.data.stats import class_counts, training_distribution

FRAME = pd.DataFrame(
    [("fairface", "train", 0, 0, -1), ("fairface", "train", 8, 1, -1), ("fairface", "train", 8, 1, -1),
     ("rafdb", "train", -1, 1, 3), ("rafdb", "test", -1, -1, 6), ("celebahq", "val", -1, 0, -1)],
    columns=["dataset", "split", "age", "gender", "emotion"])


def test_class_counts_by_hand():
    c = class_counts(FRAME).set_index(["dataset", "split", "task", "class_name"])
    assert c.loc[("fairface", "train", "age", "70+"), "count"] == 2
    assert c.loc[("fairface", "train", "age", "70+"), "percent"] == pytest.approx(200 / 3)
    assert c.loc[("fairface", "train", "age", "3-9"), "count"] == 0  # empty classes are listed
    assert ("fairface", "train", "emotion", "Happy") not in c.index  # no emotion labels there
    assert c.loc[("rafdb", "test", "emotion", "Neutral"), "percent"] == 100
    assert len(class_counts(FRAME)) == 9 + 2 + 2 + 7 + 7 + 2  # ff age+gender, raf train gender+emotion, test, celeba


def test_training_distribution_by_hand():
    t = training_distribution(FRAME)
    assert t["age"].samples.tolist() == [1, 0, 0, 0, 0, 0, 0, 0, 2]
    assert t["gender"].samples.tolist() == [1, 3] and t["gender"].percent.tolist() == [25.0, 75.0]
    assert t["emotion"].samples.tolist() == [0, 0, 0, 1, 0, 0, 0]
    tasks = t["tasks"].set_index("task")
    assert tasks.loc["gender", "samples"] == 4 and tasks.loc["age", "percent"] == pytest.approx(75.0)


def test_percentages_are_of_the_samples_carrying_the_task_as_in_table_3_2():
    """Table 3.2: each task's % is over the samples labelled for that task (0-2: 2,935 / 136,747 = 2.15%), not
    over every training sample (168,362). A training set with Table 3.2's counts gives its printed % columns."""
    def column(task, n):  # Table 3.2's sample counts of `task` in class order, then n - total unlabelled
        counts = [row[0] for row in thesis.TABLES[f"3.2/{task}"].rows.values()]
        return np.concatenate([np.repeat(np.arange(len(counts)), counts), np.full(n - sum(counts), -1)])
    n = 168_362
    df = pd.DataFrame({"dataset": "lagenda", "split": "train", "age": column("age", n), "gender": column("gender", n),
                       "emotion": column("emotion", n)[::-1]})  # emotion on rows without age, as RAF-DB's
    dist = training_distribution(df)
    counts = class_counts(df)
    for task in ("age", "gender", "emotion"):
        published = [row[1] for row in thesis.TABLES[f"3.2/{task}"].rows.values()]
        assert dist[task].percent.round(2).tolist() == published, task
        assert counts[counts.task == task].percent.round(2).tolist() == published, task
    assert dist["tasks"].percent.round(2).tolist() == [100.0, 81.22, 5.47]
