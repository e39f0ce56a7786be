"""Composition (thesis §2.7, Table 3.1) and the Table 3.2 totals it implies."""
from pathlib import Path

import numpy as np
import pytest

from replication.data.compose import compose, split_train_val, training_totals
from replication.data.readers import ReadResult, Record, read_fairface, read_rafdb_list
from test_data_readers import REF, needs_ref


def _records(dataset, split, n, **labels):
    return [Record(dataset, Path(f"{i}.jpg"), f"{i}.jpg", f"{dataset}{i:06d}", split, **labels) for i in range(n)]


@pytest.mark.parametrize("n", [0, 1, 4, 5, 11_519, 86_744])
def test_split_sizes_are_floor_of_80_percent(n):
    mask = split_train_val(n, seed=0, dataset="fairface")
    assert mask.sum() == int(np.floor(0.8 * n)) and len(mask) == n


def test_split_is_seeded_per_dataset():
    a = split_train_val(1000, 0, "fairface")
    assert (a == split_train_val(1000, 0, "fairface")).all()
    assert (a != split_train_val(1000, 1, "fairface")).any()
    assert (a != split_train_val(1000, 0, "lagenda")).any()


def test_roles_and_removals():
    recs = (_records("fairface", "train", 10, age=1, gender=0) + _records("fairface", "val", 3, age=2, gender=1)
            + _records("celebahq", "val", 2, gender=1) + _records("rafdb", "train", 5, emotion=3)
            + _records("utkface", "all", 2, age=0, gender=0))
    out = compose(recs, seed=0)
    splits = {}
    for r, s in out.rows:
        splits.setdefault((r.dataset, s), 0)
        splits[(r.dataset, s)] += 1
    assert splits == {("fairface", "train"): 8, ("fairface", "val"): 2, ("fairface", "test"): 3,
                      ("utkface", "test"): 2}
    assert {k: len(v) for k, v in out.removed["celebahq"].items()} == {"not_used_by_table_3_1 (val)": 2}
    assert len(out.removed["rafdb"]["train_gender_unsure_or_missing"]) == 5


def test_split_does_not_depend_on_record_order():
    recs = _records("lagenda", "all", 50, age=3, gender=1)
    a = {r.key: s for r, s in compose(recs, 3).rows}
    b = {r.key: s for r, s in compose(recs[::-1], 3).rows}
    assert a == b


@needs_ref
def test_table_3_2_totals():
    """Table 3.2(a): 136,747 age, 168,362 gender, 9,215 emotion training samples.

    FairFace and RAF-DB come from the real label files. LAGENDA's 84,190 usable rows,
    RAF-DB's 752 "unsure" genders and CelebA-HQ's 28,000-image folder are not available
    here (Drive / request-only files) and are stood in by records of those sizes.
    """
    fairface = read_fairface(REF / "fairface").records
    raf = ReadResult("rafdb")
    read_rafdb_list(REF / "raf-db" / "list_patition_label.txt", Path("img"), raf)
    rng = np.random.default_rng(0)
    unsure = set(rng.choice(12_271, 752, replace=False))
    rafdb = [Record(r.dataset, r.image, r.name, r.key, r.split, gender=-1 if i in unsure else i % 2,
                    emotion=r.emotion) for i, r in enumerate(raf.records)]
    lagenda = _records("lagenda", "all", 84_190, age=4, gender=0)
    celebahq = _records("celebahq", "train", 28_000, gender=1) + _records("celebahq", "val", 2_000, gender=0)
    out = compose(fairface + rafdb + lagenda + celebahq, seed=0)
    assert training_totals(out.rows) == {"gender": 168_362, "age": 136_747, "emotion": 9_215}
    train = {}
    for r, s in out.rows:
        train[(r.dataset, s)] = train.get((r.dataset, s), 0) + 1
    assert train[("fairface", "train")] == 69_395 and train[("fairface", "test")] == 10_954
    assert train[("rafdb", "train")] == 9_215 and train[("rafdb", "test")] == 3_068
    assert train[("celebahq", "train")] == 22_400 and train[("lagenda", "train")] == 67_352


def test_the_data_package_re_exports_each_submodules_own_objects():
    """``from replication.data import X`` (notebooks, runs, tables) gets the submodule's X itself, and ``*`` gets
    exactly these names."""
    import importlib

    import replication.data as data

    exported = {"compose": ("compose", "training_totals"),
                "prepare": ("MANIFEST_COLUMNS", "ManifestError", "PreparedFolderError", "read_manifest",
                            "read_prepare_settings", "read_report", "run_prepare"),
                "readers": ("READERS", "Record"), "stats": ("class_counts", "training_distribution")}
    assert sorted(data.__all__) == sorted(n for names in exported.values() for n in names)
    for module, names in exported.items():
        source = importlib.import_module(f"replication.data.{module}")
        assert all(getattr(data, n) is getattr(source, n) for n in names), module
