"""``demo-data`` + ``prepare`` end to end: every bad input is counted with its file name,
nothing is dropped silently, re-runs resume, and the manifest validates."""
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from replication.data import demo, prepare as prep
from replication.data.faces import SSDFaceDetector
from replication.data.prepare import MANIFEST_COLUMNS, ManifestError, crop_mode, read_manifest, run_prepare
from replication.labels import DATASETS
from test_data_faces import StubNet


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    start = time.perf_counter()
    raw = demo.make_demo(root / "raw", seed=0, scale=0.1)
    report = run_prepare(raw, root / "prepared", detector="boxes", size=32, progress=False)
    return raw, root / "prepared", report, time.perf_counter() - start


def _listed(report, dataset, reason, key="skipped"):
    return report["datasets"][dataset][key].get(reason, {"files": []})["files"]


def test_demo_bad_inputs_are_counted_by_name(demo_run):
    _, out, report, _ = demo_run
    assert report == json.loads((out / "report.json").read_text())
    assert _listed(report, "fairface", "truncated_or_corrupt") == ["train/5.jpg"]
    assert _listed(report, "fairface", "missing_file") == ["val/2.jpg"]
    [bad_label] = _listed(report, "fairface", "unknown_label")
    assert bad_label == "train/3.jpg (line 4) age='03-Sep', gender='Female'"
    assert _listed(report, "rafdb", "empty_file") == ["train_00003.jpg"]
    assert "train_00007.jpg" in _listed(report, "rafdb", "train_gender_unsure_or_missing")
    assert _listed(report, "utkface", "bad_file_name") == ["unlabelled_face.jpg.chip.jpg"]
    assert len(_listed(report, "utkface", "grayscale_converted", "notes")) == 1
    assert _listed(report, "celebahq", "alpha_dropped", "notes")[0].endswith(".png")
    assert report["datasets"]["celebahq"]["skipped"]["not_used_by_table_3_1 (val)"]["count"] == 12


def test_the_unused_celebahq_val_folder_is_counted_by_class_for_fig_2_13b(demo_run):
    raw, _, report, _ = demo_run
    val = raw / "celebahq" / "celeba_hq" / "val"
    files = {g: len(list((val / g).iterdir())) for g in ("male", "female")}
    counts = report["datasets"]["celebahq"]["not_used_class_counts"]
    assert {(c["split"], c["task"], c["class_name"]): c["count"] for c in counts} == {
        ("val", "gender", g): n for g, n in files.items()}
    assert sum(files.values()) == 12 and min(files.values()) > 0
    # datasets whose every record is in Table 3.1 have none
    assert all(report["datasets"][d]["not_used_class_counts"] == [] for d in report["datasets"] if d != "celebahq")
    assert report["datasets"]["lagenda"]["skipped"]["no_face_box"]["count"] == 1
    assert report["datasets"]["lagenda"]["skipped"]["missing_file"]["count"] >= 1
    assert _listed(report, "vggface2", "unknown_identity")[0].startswith("n000001/")
    assert report["datasets"]["vggface2"]["notes"]["age_missing"]["count"] == 1


def test_every_row_is_in_the_manifest_or_counted(demo_run):
    _, out, report, _ = demo_run
    df = read_manifest(out / "manifest.csv")
    assert list(df.columns) == MANIFEST_COLUMNS and set(df.dataset) == set(DATASETS)
    for d, r in report["datasets"].items():
        skipped = sum(v["count"] for v in r["skipped"].values())
        assert r["rows_read"] == (df.dataset == d).sum() + skipped
        assert r["manifest"] == {s: int(((df.dataset == d) & (df.split == s)).sum()) for s in ("train", "val", "test")}
    for p in df.path.sample(5, random_state=0):
        with Image.open(out / p) as crop:
            assert crop.size == (32, 32)
    # Table 3.1 roles and the label columns each dataset carries
    assert set(df[df.dataset == "utkface"].split) == {"test"}
    assert (df[df.dataset == "rafdb"].emotion >= 0).all() and (df[df.dataset == "fairface"].emotion == -1).all()
    assert (df[(df.dataset == "rafdb") & (df.split == "train")].gender >= 0).all()
    train = df[df.split == "train"]
    assert report["training_totals"] == {t: int((train[t] >= 0).sum()) for t in ("gender", "age", "emotion")}


def test_resume_writes_nothing_new(demo_run, tmp_path):
    raw, out, first, _ = demo_run
    before = {p: p.stat().st_mtime_ns for p in (out / "crops").rglob("*.jpg")}
    second = run_prepare(raw, out, detector="boxes", size=32, progress=False)
    assert all(r["written"] == 0 for r in second["datasets"].values())
    assert sum(r["reused"] for r in second["datasets"].values()) == len(before)
    assert {p: p.stat().st_mtime_ns for p in (out / "crops").rglob("*.jpg")} == before
    assert second["datasets"] == first["datasets"] | {d: {**first["datasets"][d], "written": 0,
                                                          "reused": first["datasets"][d]["written"]}
                                                      for d in first["datasets"]}
    with pytest.raises(ValueError) as e:  # only what differs is named, not two whole settings dicts
        run_prepare(raw, out, detector="boxes", size=48, progress=False)
    assert str(e.value) == (f"{out} holds crops made with other settings: size 32 → 48. Rerun with the old "
                            "settings to resume, or use another --out folder (or delete it) to change crop settings.")


def test_resume_redoes_crops_whose_lagenda_row_changed(demo_run, tmp_path):
    """LAGENDA keys hold the CSV line number: after the CSV is re-sorted or a box edited, a crop path
    can name another person; resuming must redo it, as a fresh run from the edited CSV would crop it."""
    raw, out = tmp_path / "raw", tmp_path / "out"
    shutil.copytree(demo_run[0] / "lagenda", raw / "lagenda")
    run_prepare(raw, out, detector="boxes", size=32, datasets=("lagenda",), progress=False)
    csv_path = raw / "lagenda" / "lagenda_annotation.csv"
    lines = csv_path.read_text().splitlines()
    usable = [i for i, line in enumerate(lines[1:], start=1) if int(line.split(",")[1]) >= 0
              and line.split(",")[2] in "MF" and line.split(",")[3] != "-1.0"
              and (raw / "lagenda" / line.split(",")[0]).is_file()]
    a = next(i for i in usable if i + 1 in usable and lines[i].split(",")[0] == lines[i + 1].split(",")[0])
    lines[a], lines[a + 1] = lines[a + 1], lines[a]  # two persons of one image swap lines (= keys)
    b = next(i for i in usable if i not in (a, a + 1))
    fields = lines[b].split(",")
    fields[3:7] = [f"{float(v) + 2:.1f}" for v in fields[3:7]]  # the face box moved by 2 px
    lines[b] = ",".join(fields)
    csv_path.write_text("\n".join(lines) + "\n")

    resumed = run_prepare(raw, out, detector="boxes", size=32, datasets=("lagenda",), progress=False)
    fresh = run_prepare(raw, tmp_path / "fresh", detector="boxes", size=32, datasets=("lagenda",), progress=False)
    assert resumed["datasets"]["lagenda"]["written"] == 3
    assert resumed["datasets"]["lagenda"]["reused"] == fresh["datasets"]["lagenda"]["written"] - 3
    manifest = (out / "manifest.csv").read_text()
    assert manifest == (tmp_path / "fresh" / "manifest.csv").read_text()
    for rel in pd.read_csv(out / "manifest.csv").path:
        assert (out / rel).read_bytes() == (tmp_path / "fresh" / rel).read_bytes(), rel


def test_demo_is_deterministic_and_fast(demo_run, tmp_path):
    raw, _, _, seconds = demo_run
    assert seconds < 30
    again = demo.make_demo(tmp_path / "raw", seed=0, scale=0.1)
    for rel in ("fairface/fairface_label_train.csv", "lagenda/lagenda_annotation.csv",
                "rafdb/basic/Image/original/train_00010.jpg", "vggface2/identity_meta.csv"):
        assert (again / rel).read_bytes() == (raw / rel).read_bytes()


def test_ssd_mode_no_face(tmp_path):
    """With the SSD, FairFace keeps a faceless image (fallback crop); UTKFace skips it."""
    raw = tmp_path / "raw"
    face = np.random.default_rng(0).integers(0, 255, (60, 60, 3), dtype=np.uint8)
    blank = np.full((60, 60, 3), 128, np.uint8)
    ff = raw / "fairface" / "fairface-img-margin025-trainval" / "train"
    ff.mkdir(parents=True)
    (raw / "fairface" / "fairface_label_train.csv").write_text(
        "file,age,gender,race,service_test\ntrain/1.jpg,20-29,Male,White,True\n"
        "train/2.jpg,more than 70,Female,White,False\n")
    (raw / "fairface" / "fairface_label_val.csv").write_text("file,age,gender,race,service_test\n")
    Image.fromarray(face).save(ff / "1.jpg")
    Image.fromarray(blank).save(ff / "2.jpg")
    utk = raw / "utkface" / "UTKFace"
    utk.mkdir(parents=True)
    Image.fromarray(face).save(utk / "25_0_0_20170101.jpg.chip.jpg")
    Image.fromarray(blank).save(utk / "80_1_0_20170101.jpg.chip.jpg")

    class FaceWhereTexture(StubNet):  # "finds" a face unless the image is flat
        def forward(self):
            conf = 0.9 if self.blob.std(axis=(2, 3)).max() > 1 else 0.1
            return np.array([0, 1, conf, 0.2, 0.2, 0.8, 0.8], np.float32).reshape(1, 1, 1, 7)

    report = run_prepare(raw, tmp_path / "out", detector="ssd", size=24, ssd=SSDFaceDetector(FaceWhereTexture([])),
                     progress=False)
    ff_r, utk_r = report["datasets"]["fairface"], report["datasets"]["utkface"]
    assert ff_r["fallback_used"] == 1 and ff_r["faces_not_found"] == 1
    assert ff_r["notes"]["no_face_fallback"]["files"] == ["train/2.jpg"]
    assert sum(ff_r["manifest"].values()) == 2
    assert utk_r["skipped"]["no_face"]["files"] == ["80_1_0_20170101.jpg.chip.jpg"]
    assert utk_r["faces_not_found"] == 1 and utk_r["manifest"]["test"] == 1


def test_crop_modes():
    """§2.7: the SSD, or the authors' boxes if present; --detector boxes never runs the SSD."""
    assert {d: crop_mode(d, "ssd") for d in DATASETS} == {
        "lagenda": "boxes", "fairface": "ssd", "rafdb": "box_else_ssd", "celebahq": "ssd",
        "utkface": "ssd", "vggface2": "box_else_ssd"}
    assert {d: crop_mode(d, "boxes") for d in DATASETS} == {
        "lagenda": "boxes", "fairface": "none", "rafdb": "boxes", "celebahq": "none",
        "utkface": "none", "vggface2": "boxes"}
    assert crop_mode("rafdb", "ssd", aligned=("rafdb",)) == crop_mode("vggface2", "none") == "none"


def _boxed_raw(raw: Path, img: np.ndarray, rafdb_boxes: dict, vgg_boxes: str) -> Path:
    """RAF-DB train_00001 / test_0001 (``rafdb_boxes``: stem -> box file text) and VGGFace2 n000001's
    0001_01 / 0002_01 (``vgg_boxes``: loose_bb_test.csv rows), every image ``img``."""
    basic = raw / "rafdb" / "basic"
    for sub in ("EmoLabel", "Image/original", "Annotation/manual", "Annotation/boundingbox"):
        (basic / sub).mkdir(parents=True)
    (basic / "EmoLabel" / "list_patition_label.txt").write_text("train_00001.jpg 4\ntest_0001.jpg 2")
    for stem in ("train_00001", "test_0001"):
        Image.fromarray(img).save(basic / "Image" / "original" / f"{stem}.jpg")
        (basic / "Annotation" / "manual" / f"{stem}_manu_attri.txt").write_text("1\t2\n" * 5 + "0\n0\n2\n")
    for stem, box in rafdb_boxes.items():
        (basic / "Annotation" / "boundingbox" / f"{stem}_boundingbox.txt").write_text(box + "\n")
    vgg = raw / "vggface2"
    (vgg / "test" / "n000001").mkdir(parents=True)
    (vgg / "bb_landmark").mkdir()
    for name in ("0001_01", "0002_01"):
        Image.fromarray(img).save(vgg / "test" / "n000001" / f"{name}.jpg")
    (vgg / "test_list.txt").write_text("n000001/0001_01.jpg\nn000001/0002_01.jpg\n")
    (vgg / "identity_meta.csv").write_text("Class_ID, Name, Sample_Num, Flag, Gender\nn000001,\"A\",2,0, f\n")
    (vgg / "bb_landmark" / "loose_bb_test.csv").write_text("NAME_ID,X,Y,W,H\n" + vgg_boxes)
    return raw


def test_ssd_mode_crops_shipped_boxes_without_the_detector(tmp_path):
    """RAF-DB / VGGFace2 records with a shipped box are cropped from it; only the others meet the SSD."""
    raw = tmp_path / "raw"
    img = np.zeros((60, 60, 3), np.uint8)
    img[10:30, 10:30] = 255  # the shipped box covers the white square; the stub SSD answers a black corner
    _boxed_raw(raw, img, {"train_00001": "10 10 30 30"}, "n000001/0002_01,10,10,20,20\n")

    net = StubNet([[0, 1, 0.9, 0.6, 0.6, 0.9, 0.9]])  # a "face" at pixels 36..54: black
    calls = []
    net.setInput = calls.append  # one blob per detector run
    report = run_prepare(raw, tmp_path / "out", detector="ssd", size=24, margin=0.0, progress=False,
                         ssd=SSDFaceDetector(net))
    crops = tmp_path / "out" / "crops"
    brightness = {p.relative_to(crops).as_posix(): np.asarray(Image.open(p)).mean() for p in crops.rglob("*.jpg")}
    assert {k: v > 240 for k, v in brightness.items()} == {  # True: cropped from the shipped box
        "rafdb/train_00001.jpg": True, "rafdb/test_0001.jpg": False,
        "vggface2/n000001_0001_01.jpg": False, "vggface2/n000001_0002_01.jpg": True}
    assert all(v > 240 or v < 15 for v in brightness.values())
    assert len(calls) == 2  # the detector ran once per record without a box, never for the others
    for d, no_box in (("rafdb", ["test_0001.jpg"]), ("vggface2", ["n000001/0001_01.jpg"])):
        assert report["datasets"][d]["crop"] == "box_else_ssd"
        assert report["datasets"][d]["notes"]["no_shipped_box_ssd_used"]["files"] == no_box

    # a folder cropped under another box policy (settings without "crop") is not reused
    settings_file = tmp_path / "out" / "prepare_settings.json"
    settings = json.loads(settings_file.read_text())
    settings_file.write_text(json.dumps({k: v for k, v in settings.items() if k != "crop"}))
    with pytest.raises(ValueError, match="another --out"):
        run_prepare(raw, tmp_path / "out", detector="ssd", size=24, margin=0.0, progress=False,
                    ssd=SSDFaceDetector(net))


def test_degenerate_shipped_boxes_are_skipped(tmp_path):
    """A RAF-DB / VGGFace2 box without area is skipped as no_face_box (like LAGENDA's), never cropped 1x1."""
    raw = tmp_path / "raw"
    img = np.full((60, 60, 3), 200, np.uint8)
    _boxed_raw(raw, img, {"train_00001": "10 10 30 30", "test_0001": "10 10 10 30"},  # zero width
               "n000001/0001_01,10,10,20,20\nn000001/0002_01,10,10,20,0\n")  # zero height
    report = run_prepare(raw, tmp_path / "out", detector="boxes", size=24, progress=False)
    assert report["datasets"]["rafdb"]["skipped"]["no_face_box"] == {"count": 1, "files": ["test_0001.jpg"]}
    assert report["datasets"]["vggface2"]["skipped"]["no_face_box"] == {"count": 1, "files": ["n000001/0002_01.jpg"]}
    crops = tmp_path / "out" / "crops"
    assert sorted(p.relative_to(crops).as_posix() for p in crops.rglob("*.jpg")) == [
        "rafdb/train_00001.jpg", "vggface2/n000001_0001_01.jpg"]


def test_cli_names_the_absent_datasets(tmp_path, capsys):
    """A data root with only some datasets is prepared, and the console says which ones were not there."""
    raw = _boxed_raw(tmp_path / "raw", np.full((60, 60, 3), 200, np.uint8), {"train_00001": "10 10 30 30"},
                     "n000001/0001_01,10,10,20,20\n")
    assert prep.cli(["--data-root", str(raw), "--out", str(tmp_path / "out"), "--detector", "boxes",
                     "--size", "24", "--workers", "1"]) == 0
    assert f"absent (no folder in {raw}): lagenda, fairface, celebahq, utkface\n" in capsys.readouterr().out


def test_cli_warns_of_empty_datasets_and_a_missing_mivia_age_file(tmp_path, capsys):
    """Both leave a dataset or test set empty without stopping the run: the console says so, not
    only report.json."""
    raw = _boxed_raw(tmp_path / "raw", np.full((60, 60, 3), 200, np.uint8), {"train_00001": "10 10 30 30"},
                     "n000001/0001_01,10,10,20,20\n")  # _boxed_raw writes no MIVIA age file
    (raw / "rafdb" / "basic" / "EmoLabel" / "list_patition_label.txt").write_text("")
    assert prep.cli(["--data-root", str(raw), "--out", str(tmp_path / "out"), "--detector", "boxes",
                     "--size", "24"]) == 0
    out = capsys.readouterr().out
    assert "warning: rafdb read 0 rows (empty label list or image folders?): it adds nothing to the manifest\n" in out
    assert (f"warning: vggface2 has no MIVIA age file (expected {raw / 'vggface2'}/test.age_detected.csv): "
            "its images have no age, so its age test set is empty\n") in out
    assert out.count("warning:") == 2
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["datasets"]["rafdb"]["rows_read"] == 0
    assert report["datasets"]["vggface2"]["notes"]["mivia_age_file_absent"]["count"] == 1


def test_cli_warns_of_unread_celebahq_folders_and_of_datasets_or_test_sets_left_empty(demo_run, tmp_path, capsys):
    """CelebA-HQ's images outside celeba_hq/{train,val}/{male,female} were not read and not counted, and a dataset
    whose every row was skipped, or whose Table 3.1 test set was empty, said nothing (only 0 rows read did)."""
    raw = tmp_path / "raw"
    for d in ("fairface", "rafdb", "celebahq"):
        shutil.copytree(demo_run[0] / d, raw / d)
    (raw / "fairface" / "fairface_label_val.csv").write_text("file,age,gender,race,service_test\n")
    shutil.rmtree(raw / "rafdb" / "basic" / "Image" / "original")
    rafdb_rows = len((raw / "rafdb" / "basic" / "EmoLabel" / "list_patition_label.txt").read_text().split("\n"))
    train = raw / "celebahq" / "celeba_hq" / "train"
    (train / "female").rename(train / "Female")  # e.g. renamed by hand
    assert prep.cli(["--data-root", str(raw), "--out", str(tmp_path / "out"), "--detector", "boxes",
                     "--size", "24"]) == 0
    assert [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning:")] == [
        "warning: fairface has no test rows: its official val split, Table 3.1's test set, gave none",
        f"warning: rafdb skipped all of its {rafdb_rows} rows: it adds nothing to the manifest",
        "warning: celebahq lacks the folder(s) celeba_hq/train/female of its layout (see the README): it is prepared "
        "without them",
        "warning: celebahq has folders outside its layout (see the README), whose images are not read: "
        "celeba_hq/train/Female"]


def test_cli_says_when_the_data_root_does_not_exist(tmp_path, capsys):
    missing = tmp_path / "no-such-folder"
    assert prep.cli(["--data-root", str(missing), "--out", str(tmp_path / "out"), "--detector", "boxes"]) == 2
    assert f"prepare: error: data root {missing} does not exist: expected a folder holding some of" in (
        capsys.readouterr().err)
    assert not (tmp_path / "out").exists()


def test_missing_detector_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "raw" / "utkface" / "UTKFace").mkdir(parents=True)
    code = prep.cli(["--data-root", str(tmp_path / "raw"), "--out", str(tmp_path / "out"),
                     "--detector-dir", str(tmp_path / "nothing")])
    err = capsys.readouterr().err
    assert code == 2 and "res10_300x300_ssd_iter_140000_fp16.caffemodel" in err and "opencv_3rdparty" in err
    assert not (tmp_path / "out" / "manifest.csv").exists()


@pytest.mark.parametrize("column,value,message", [
    ("age", "9", "age='9', expected an integer in -1..8"),
    ("gender", "x", "gender='x'"),
    ("split", "dev", "split='dev'"),
    ("dataset", "imdb", "dataset='imdb'"),
])
def test_read_manifest_names_the_bad_row(tmp_path, column, value, message):
    df = pd.DataFrame([["crops/a.jpg", "fairface", "train", 3, 1, -1],
                       ["crops/b.jpg", "rafdb", "test", -1, -1, 6]], columns=MANIFEST_COLUMNS).astype(str)
    df.loc[1, column] = value
    df.to_csv(tmp_path / "manifest.csv", index=False)
    with pytest.raises(ValueError, match=r"row 2 \(line 3\)") as e:
        read_manifest(tmp_path / "manifest.csv")
    assert message in str(e.value)


def test_read_manifest_names_a_file_that_is_no_csv(tmp_path):
    """An empty file (a prepare killed as it began writing) used to raise pandas' EmptyDataError; binary junk its
    ParserError. Both are ManifestErrors naming the file, which `train` reports in one line."""
    path = tmp_path / "manifest.csv"
    path.write_bytes(b"")
    with pytest.raises(ManifestError) as err:
        read_manifest(path)
    assert str(err.value) == f"{path}: empty file, expected a CSV with the header path,dataset,split,age,gender,emotion"
    path.write_bytes(bytes(range(256)) * 4)  # pandas < 3 (Python 3.10's) raised a bare UnicodeDecodeError here
    with pytest.raises(ManifestError) as err:
        read_manifest(path)
    assert str(err.value) == (f"{path} line 2: byte 0x80 is not UTF-8 text; expected the manifest.csv that "
                              f"prepare writes, not a binary file or a copy saved in another encoding")
    path.write_text("path,dataset\na,b\na,b,c,d\n")
    with pytest.raises(ManifestError) as err:
        read_manifest(path)
    # pandas's own words (not pinned) follow, naming the line
    assert str(err.value).startswith(f"{path}: not a CSV pandas can read: ") and "line 3" in str(err.value)


def test_read_manifest_types(tmp_path):
    pd.DataFrame([["crops/a.jpg", "fairface", "train", 3, 1, -1]], columns=MANIFEST_COLUMNS).to_csv(
        tmp_path / "m.csv", index=False)
    df = read_manifest(tmp_path / "m.csv")
    assert df.loc[0, "age"] == 3 and df["emotion"].dtype == np.int64


def test_workers_give_the_same_manifest(demo_run, tmp_path):
    raw, out, _, _ = demo_run
    report = run_prepare(raw, tmp_path / "p", detector="boxes", size=32, workers=2, progress=False)
    assert (tmp_path / "p" / "manifest.csv").read_text() == (out / "manifest.csv").read_text()
    # every crop written is in the manifest unless Table 3.1's composition removed it
    composed_out = ("train_gender_unsure_or_missing", "not_used_by_table_3_1 (val)")
    removed = sum(r["skipped"][k]["count"] for r in report["datasets"].values() for k in composed_out
                  if k in r["skipped"])
    assert sum(r["written"] for r in report["datasets"].values()) == report["manifest_rows"] + removed


@pytest.mark.parametrize("flag, value, expected", [
    ("--size", "0", "a whole number >= 2"), ("--size", "-64", "a whole number >= 2"),
    ("--margin", "-0.9", "a number >= 0"), ("--margin", "nan", "a number >= 0"),
    ("--threshold", "0", "a number > 0 and <= 1"), ("--threshold", "1.5", "a number > 0 and <= 1"),
    ("--workers", "-2", "a whole number >= 1"), ("--workers", "0", "a whole number >= 1"),
    ("--seed", "-1", "a whole number >= 0"),  # it failed after every crop, naming no option
])
def test_cli_refuses_settings_out_of_range(tmp_path, capsys, flag, value, expected):
    # --size 0 used to write an empty manifest (every crop failed) and exit 0; the others were taken as given
    with pytest.raises(SystemExit) as exit_:
        prep.cli(["--data-root", str(tmp_path), "--out", str(tmp_path / "out"), flag, value])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.endswith(f"error: argument {flag}: expected {expected}, got '{value}'\n")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flag, value, expected", [
    ("--datasets", "", "argument --datasets: expected one or more of lagenda, fairface, rafdb, celebahq, utkface, "
                       "vggface2, got ''"),
    ("--datasets", ",", "argument --datasets: expected one or more of lagenda, fairface, rafdb, celebahq, utkface, "
                        "vggface2, got ','"),
    ("--aligned", "lagenda,utkface", "argument --aligned: lagenda is always cropped from its face boxes; --aligned "
                                     "takes fairface, rafdb, celebahq, utkface, vggface2"),
])
def test_cli_refuses_no_datasets_and_aligned_lagenda(tmp_path, capsys, flag, value, expected):
    """An empty list was "no dataset folder in RAW: expected some of " (an empty list); --aligned lagenda was
    ignored (LAGENDA's photos hold several people, always cut from its boxes)."""
    (tmp_path / "lagenda").mkdir()
    with pytest.raises(SystemExit) as exit_:
        prep.cli(["--data-root", str(tmp_path), "--out", str(tmp_path / "out"), flag, value])
    assert exit_.value.code == 2 and capsys.readouterr().err.endswith(f"error: {expected}\n")
    assert not (tmp_path / "out").exists()


def test_cli_says_in_one_line_when_the_out_folder_cannot_be_made(tmp_path, capsys):
    raw = _boxed_raw(tmp_path / "raw", np.full((60, 60, 3), 200, np.uint8), {"train_00001": "10 10 30 30"},
                     "n000001/0001_01,10,10,20,20\n")
    (tmp_path / "afile").write_text("")
    out = tmp_path / "afile" / "out"
    assert prep.cli(["--data-root", str(raw), "--out", str(out), "--detector", "boxes"]) == 2
    assert capsys.readouterr().err == f"prepare: error: {out}: {tmp_path / 'afile'} is a file, not a folder\n"


def test_cli_says_in_one_line_when_the_out_folder_is_not_writable(tmp_path, capsys, monkeypatch):
    # os.access is asked, not chmod tried: root may write anywhere, so the refusal is staged for the test
    (tmp_path / "raw" / "fairface").mkdir(parents=True)
    (tmp_path / "locked").mkdir()
    monkeypatch.setattr(os, "access", lambda path, mode: path != tmp_path / "locked")
    out = tmp_path / "locked" / "new" / "out"
    assert prep.cli(["--data-root", str(tmp_path / "raw"), "--out", str(out), "--detector", "boxes"]) == 2
    assert capsys.readouterr().err == f"prepare: error: {out}: no permission to write in {tmp_path / 'locked'}\n"
    assert not out.exists()


def test_cli_names_an_empty_label_csv(tmp_path, capsys):
    (tmp_path / "raw" / "fairface").mkdir(parents=True)
    (tmp_path / "raw" / "fairface" / "fairface_label_train.csv").write_bytes(b"")
    assert prep.cli(["--data-root", str(tmp_path / "raw"), "--out", str(tmp_path / "out"), "--detector", "boxes"]) == 2
    assert capsys.readouterr().err == (f"prepare: error: {tmp_path / 'raw' / 'fairface' / 'fairface_label_train.csv'}: "
                                       "the file is empty; expected a header with the columns file, age, gender\n")


def test_a_prepare_that_failed_before_any_crop_does_not_hold_its_settings(tmp_path, capsys):
    """A first run stopped by a missing label file leaves only prepare_settings.json: the corrected command may
    change the settings; once crops exist, a change is refused with the settings that differ."""
    raw, out = tmp_path / "raw", tmp_path / "out"
    ff = raw / "fairface" / "fairface-img-margin025-trainval" / "train"
    ff.mkdir(parents=True)
    Image.fromarray(np.full((40, 40, 3), 128, np.uint8)).save(ff / "1.jpg")
    (raw / "fairface" / "fairface_label_train.csv").write_text(
        "file,age,gender,race,service_test\ntrain/1.jpg,20-29,Male,White,True\n")
    args = ["--data-root", str(raw), "--out", str(out), "--detector", "boxes"]
    assert prep.cli(args + ["--size", "32"]) == 2
    assert sorted(p.name for p in out.iterdir()) == ["prepare_settings.json"]
    (raw / "fairface" / "fairface_label_val.csv").write_text("file,age,gender,race,service_test\n")
    assert prep.cli(args + ["--size", "48"]) == 0
    assert prep.read_prepare_settings(out)["size"] == 48
    with Image.open(out / "crops" / "fairface" / "train_1.jpg") as crop:
        assert crop.size == (48, 48)
    capsys.readouterr()
    assert prep.cli(args + ["--size", "64", "--margin", "0.1"]) == 2
    assert capsys.readouterr().err == (
        f"prepare: error: {out} holds crops made with other settings: size 48 → 64, margin 0.2 → 0.1. Rerun with "
        "the old settings to resume, or use another --out folder (or delete it) to change crop settings.\n")


def _lagenda_args(demo_run, tmp_path) -> list[str]:
    """prepare's arguments for the demo's LAGENDA alone (copied under ``tmp_path``) into ``tmp_path/out``."""
    shutil.copytree(demo_run[0] / "lagenda", tmp_path / "raw" / "lagenda")
    return ["--data-root", str(tmp_path / "raw"), "--out", str(tmp_path / "out"), "--detector", "boxes", "--size", "24"]


def test_damaged_state_files_of_a_prepared_folder_are_named_with_the_way_out(demo_run, tmp_path, capsys):
    """An emptied prepare_settings.json was "prepare: error: Expecting value: line 1 column 1 (char 0)", naming no
    file; a journal line of JSON but no crop's entry a TypeError traceback."""
    args, out = _lagenda_args(demo_run, tmp_path), tmp_path / "out"
    assert prep.cli(args) == 0
    settings, journal = out / "prepare_settings.json", out / "journal.jsonl"
    kept = settings.read_text()
    for text, got in (("", "the file is empty"), ("[1, 2]", "a JSON list")):
        settings.write_text(text)
        capsys.readouterr()
        assert prep.cli(args) == 2
        assert capsys.readouterr().err == (
            f"prepare: error: {settings}: {got}; expected the JSON object of crop settings that prepare writes. "
            "Delete it and run prepare with the settings its crops were made with (report.json's options), or "
            "prepare into another --out\n")
    settings.write_text(kept)
    lines = journal.read_text().splitlines()
    journal.write_text("\n".join(lines + ["[1,2]", lines[0]]) + "\n")
    assert prep.cli(args) == 2
    assert capsys.readouterr().err == (
        f"prepare: error: {journal} line {len(lines) + 1}: expected a crop's JSON object with its path, source, box "
        "and notes, as prepare writes, got '[1,2]'; delete that line or the file: the crops they stood for are made "
        "again\n")
    journal.write_text("\n".join(lines[1:] + [lines[0][:20]]) + "\n")  # a line cut by a run killed: redone
    assert prep.cli(args) == 0
    assert json.loads((out / "report.json").read_text())["datasets"]["lagenda"]["written"] == 1


def test_a_second_prepare_on_a_folder_being_written_is_refused(demo_run, tmp_path, capsys):
    """Two runs on one --out both redid every crop and appended each to the journal twice (and one could fail in
    atomic_write): the second now gets one line and writes nothing, as a second `train` on a run folder does."""
    args, out = _lagenda_args(demo_run, tmp_path), tmp_path / "out"
    lock = out / ".prepare.lock"
    out.mkdir()
    with open(lock, "a") as held:  # as another prepare holds it
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert prep.cli(args) == 2
        assert capsys.readouterr().err == (f"prepare: error: another prepare is writing {out} now ({lock} is locked); "
                                           "once it has finished, the same command reuses its crops; or prepare into "
                                           "another --out\n")
        assert [p.name for p in out.iterdir()] == [lock.name]
    assert prep.cli(args) == 0 and not lock.exists()  # the file a killed holder leaves is taken, then removed


def test_an_interrupted_prepare_says_how_to_resume(tmp_path, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(prep, "run_prepare", interrupted)
    out = tmp_path / "out"
    assert prep.cli(["--data-root", str(tmp_path), "--out", str(out)]) == 130
    assert capsys.readouterr().err == (f"\nprepare: interrupted; the same command resumes: the crops already in {out} "
                                       "are reused\n")


def test_ctrl_c_stops_the_workers_without_tracebacks_and_the_same_command_resumes(demo_run, tmp_path):
    """Ctrl-C as a terminal sends it, to the whole process group (the pool's workers too): one line, exit 130,
    and the crops written before it are reused by the next run."""
    raw = demo_run[0]
    out = tmp_path / "out"
    # large crops keep the run going for seconds after its first crop
    argv = ["--data-root", str(raw), "--out", str(out), "--detector", "boxes", "--size", "1536", "--workers", "2"]
    proc = subprocess.Popen([sys.executable, "-m", "replication", "prepare", *argv], cwd=Path(__file__).parents[1],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    journal = out / "journal.jsonl"
    while proc.poll() is None and not (journal.is_file() and journal.read_text().count("\n") >= 2):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=60)  # the pool used to wait for the work its dead workers had dropped
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130 and "Traceback" not in err
    assert err.endswith(f"\nprepare: interrupted; the same command resumes: the crops already in {out} are reused\n")
    kept = journal.read_text().count("\n")
    report = run_prepare(raw, out, detector="boxes", size=1536, workers=2, progress=False)
    assert sum(r["reused"] for r in report["datasets"].values()) == kept > 0


@pytest.mark.parametrize("scale", ["0", "-1"])
def test_demo_data_refuses_a_scale_that_is_not_positive(tmp_path, capsys, scale):
    # it wrote the minimum set (12 images per split) as if asked for it
    with pytest.raises(SystemExit) as exit_:
        demo.cli(["--out", str(tmp_path / "raw"), "--scale", scale])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.endswith(f"error: argument --scale: expected a number > 0, got '{scale}'\n")
    assert not (tmp_path / "raw").exists()


def test_demo_data_writes_only_into_a_new_or_empty_folder(tmp_path, capsys, monkeypatch):
    """Another --seed into a folder already written mixed the two sets; a folder under a file was a traceback."""
    make_demo = demo.make_demo
    monkeypatch.setattr(demo, "make_demo", lambda out, seed, scale: make_demo(out, seed, 0.05))
    (tmp_path / "raw").mkdir()
    assert demo.cli(["--out", str(tmp_path / "raw")]) == 0  # empty: written
    before = sorted(p for p in (tmp_path / "raw").rglob("*"))
    assert demo.cli(["--out", str(tmp_path / "raw"), "--seed", "1"]) == 2
    assert capsys.readouterr().err == (f"demo-data: error: {tmp_path / 'raw'} is not empty; expected a new or empty "
                                       "folder\n")
    assert sorted(p for p in (tmp_path / "raw").rglob("*")) == before
    label_csv = tmp_path / "raw" / "fairface" / "fairface_label_train.csv"
    assert demo.cli(["--out", str(label_csv / "x")]) == 2
    assert capsys.readouterr().err == f"demo-data: error: {label_csv / 'x'}: {label_csv} is a file, not a folder\n"
