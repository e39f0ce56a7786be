"""Shared by the engine and DDP tests (not a test module): a tiny prepared dataset in C's layout."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

IMAGE = 64  # demo-tiny resolution


def write_prepared(root: Path, n_train=48, n_val=12, n_test=8, seed=0) -> Path:
    """A manifest in the prepared layout with small random JPEGs whose colour depends on the labels."""
    rng = np.random.default_rng(seed)
    rows = []
    (root / "crops").mkdir(parents=True, exist_ok=True)

    def add(dataset, split, age, gender, emotion):
        i = len(rows)
        base = np.array([(age + 1) * 25, gender * 200 + 20, (emotion + 1) * 30], dtype=np.float64)
        img = np.clip(base + rng.normal(0, 20, (IMAGE, IMAGE, 3)), 0, 255).astype(np.uint8)
        path = f"crops/{i:04d}.jpg"
        Image.fromarray(img).save(root / path, quality=90)
        rows.append((path, dataset, split, age, gender, emotion))

    for split, n in (("train", n_train), ("val", n_val)):
        for i in range(n):
            kind = i % 4
            if kind < 2:    # LAGENDA / FairFace: age + gender
                add("lagenda" if kind == 0 else "fairface", split, int(rng.integers(0, 9)), int(rng.integers(0, 2)), -1)
            elif kind == 2:  # RAF-DB: emotion
                add("rafdb", split, -1, -1, int(rng.integers(0, 7)))
            else:            # CelebA-HQ: gender
                add("celebahq", split, -1, int(rng.integers(0, 2)), -1)
    for ds in ("utkface", "fairface", "vggface2"):
        for i in range(n_test):
            add(ds, "test", int(rng.integers(0, 9)), int(rng.integers(0, 2)), -1)
    for i in range(n_test):
        add("rafdb", "test", -1, -1, int(rng.integers(0, 7)))
    pd.DataFrame(rows, columns=["path", "dataset", "split", "age", "gender", "emotion"]).to_csv(
        root / "manifest.csv", index=False)
    return root
