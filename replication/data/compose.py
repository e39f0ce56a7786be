"""The thesis's dataset composition (§2.7, §3.1 Table 3.1) and its training totals (Table 3.2).

Training sources are split 80/20 into train/val *per dataset* (§2.7 "for each training set
... an 80-20 split"), train = floor(0.8·n); the official test splits are the test sets.
Three facts make Table 3.2's totals come out exactly (136,747 age, 168,362 gender,
9,215 emotion):

* FairFace train: all 86,744 images are kept (no-face images get a fallback crop) -> 69,395;
* LAGENDA: persons with both labels and a face box (84,190 of them) -> 67,352;
* RAF-DB train: images whose gender is "unsure" (or not annotated) are removed before the
  split, since every sample in Table 3.2 has a gender (11,519 kept) -> 9,215;
* CelebA-HQ: the 28,000-image training folder -> 22,400.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from replication.labels import DATASETS, MISSING

from .readers import Record

# (dataset, official split) -> role. Anything else (CelebA-HQ's official val) is unused.
TRAIN_SOURCES = {("lagenda", "all"), ("fairface", "train"), ("rafdb", "train"), ("celebahq", "train")}
TEST_SOURCES = {("fairface", "val"), ("rafdb", "test"), ("utkface", "all"), ("vggface2", "test")}
TRAIN_FRACTION = 0.8


@dataclass
class Composition:
    rows: list[tuple[Record, str]] = field(default_factory=list)  # (record, train|val|test)
    unused: list[Record] = field(default_factory=list)  # outside Table 3.1, kept for their class counts (Fig. 2.13b)
    removed: dict[str, dict[str, list[str]]] = field(  # dataset -> reason -> names
        default_factory=lambda: defaultdict(lambda: defaultdict(list)))


def split_train_val(n: int, seed: int, dataset: str) -> np.ndarray:
    """Boolean mask (True = train) with exactly floor(0.8·n) True, reproducible per dataset.

    Each dataset gets its own generator stream so that its split does not change when
    another dataset is added, removed or has a different number of readable images.
    """
    rng = np.random.default_rng([seed, DATASETS.index(dataset)])
    mask = np.zeros(n, dtype=bool)
    mask[rng.permutation(n)[: int(np.floor(TRAIN_FRACTION * n))]] = True
    return mask


def compose(records: list[Record], seed: int = 0) -> Composition:
    """Assign every record its thesis split; records outside Table 3.1 are listed as removed."""
    out = Composition()
    train_pool = defaultdict(list)
    for r in records:
        source = (r.dataset, r.split)
        if source in TEST_SOURCES:
            out.rows.append((r, "test"))
        elif source not in TRAIN_SOURCES:
            out.unused.append(r)
            out.removed[r.dataset][f"not_used_by_table_3_1 ({r.split})"].append(r.name)
        elif r.dataset == "rafdb" and r.gender == MISSING:
            out.removed[r.dataset]["train_gender_unsure_or_missing"].append(r.name)
        else:
            train_pool[r.dataset].append(r)
    for dataset, pool in train_pool.items():
        pool.sort(key=lambda r: r.key)  # the split must not depend on reading/processing order
        mask = split_train_val(len(pool), seed, dataset)
        out.rows.extend((r, "train" if m else "val") for r, m in zip(pool, mask))
    return out


def training_totals(rows: list[tuple[Record, str]]) -> dict[str, int]:
    """Table 3.2(a): number of training samples that carry each task's label."""
    train = [r for r, split in rows if split == "train"]
    return {task: sum(getattr(r, task) != MISSING for r in train) for task in ("gender", "age", "emotion")}
