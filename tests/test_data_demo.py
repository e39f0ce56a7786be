"""``demo-data``: each generated label file is in its dataset's native format (docs/dataset-formats.md, the real
label files under shared/reference-labels), and every label says what was drawn in the image it names.

The faces are recorded as the generator draws them (``draw_person`` and ``_save`` wrapped), so a label that
names another class, another box or another file than the face drawn there fails here, although the pipeline
would read it without complaint and only train on noise."""
import bisect
import csv
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from replication.data import demo
from replication.labels import DATASETS

REF = Path(__file__).resolve().parents[2] / "shared" / "reference-labels"
needs_ref = pytest.mark.skipif(not REF.is_dir(), reason="shared/reference-labels not available")

# dataset-formats.md: the 9 FairFace bins 0-2, 3-9, 10-19, ..., 60-69, 70+ and FairFace's exact age strings
FAIRFACE_AGE_STRINGS = ["0-2", "3-9", "10-19", "20-29", "30-39", "40-49", "50-59", "60-69", "more than 70"]
SCALE = 0.05


def bin_of(age: float) -> int:
    return bisect.bisect_right([3, 10, 20, 30, 40, 50, 60, 70], age)


@pytest.fixture(scope="module")
def drawn(tmp_path_factory):
    """The demo at a small scale, with (age group, gender, emotion, face box) of every face drawn, per dataset in
    drawing order, and for every image written through ``_save`` the last face drawn before it."""
    faces = {d: [] for d in DATASETS}
    saved, current = {}, [None]

    def draw(img, rng, cx, cy, u, look, emotion, body=True):
        box = real_draw(img, rng, cx, cy, u, look, emotion, body)
        faces[current[0]].append((look.age, look.gender, emotion, box))
        return box

    def save(img, path):
        if faces[current[0]]:
            saved[Path(path)] = faces[current[0]][-1]
        real_save(img, path)

    def entered(d, writer):
        def run(*args):
            current[0] = d
            return writer(*args)
        return run

    real_draw, real_save = demo.draw_person, demo._save
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(demo, "draw_person", draw)
        mp.setattr(demo, "_save", save)
        for d in DATASETS:
            mp.setattr(demo, f"write_{d}", entered(d, getattr(demo, f"write_{d}")))
        raw = demo.make_demo(tmp_path_factory.mktemp("demo") / "raw", seed=0, scale=SCALE)
    return raw, faces, saved


def test_fairface_label_csvs_name_each_chip_with_its_drawn_age_and_gender(drawn):
    raw, _, saved = drawn
    root = raw / "fairface"
    for split, n in (("train", 400), ("val", 150)):
        text = (root / f"fairface_label_{split}.csv").read_bytes().decode()
        lines = text.splitlines()
        assert lines[0] == "file,age,gender,race,service_test" and text.endswith("\n") and "\r" not in text  # LF
        if REF.is_dir():
            assert lines[0] == (REF / "fairface" / f"fairface_label_{split}.csv").read_text().splitlines()[0]
        rows = list(csv.DictReader(lines))
        # train/<n>.jpg, n = 1..N without zero padding, N = the scaled size (at least 12 per split)
        assert [r["file"] for r in rows] == [f"{split}/{i}.jpg" for i in range(1, max(12, round(n * SCALE)) + 1)]
        for r in rows:
            path = root / "fairface-img-margin025-trainval" / r["file"]
            age, gender, _, _ = saved[path]
            if (split, r["file"]) != ("train", "train/3.jpg"):  # the Excel-mangled row
                assert r["age"] == FAIRFACE_AGE_STRINGS[age], r
            assert r["gender"] == ("Male", "Female")[gender], r
            assert r["race"] in ("White", "Black", "Latino_Hispanic", "East Asian", "Southeast Asian", "Indian",
                                 "Middle Eastern") and r["service_test"] in ("True", "False")
        if split == "train":
            assert rows[2]["age"] == "03-Sep"  # an Excel-mangled "3-9", as in public copies


@needs_ref
def test_fairface_and_rafdb_shares_are_the_real_training_counts():
    """The demo draws its class mix from the real train shares (mixed with uniform)."""
    with open(REF / "fairface" / "fairface_label_train.csv", newline="") as f:
        ages = [row["age"] for row in csv.DictReader(f)]
    assert demo.FAIRFACE_SHARES.tolist() == [ages.count(a) for a in FAIRFACE_AGE_STRINGS]
    labels = [line.split()[1] for line in (REF / "raf-db" / "list_patition_label.txt").read_text().splitlines()
              if line.startswith("train_")]
    assert demo.RAFDB_SHARES.tolist() == [labels.count(str(k)) for k in range(1, 8)]


def test_mix_is_half_the_shares_and_half_uniform():
    assert demo._mix(np.array([3.0, 1.0])).tolist() == [0.5 * 0.75 + 0.25, 0.5 * 0.25 + 0.25]
    rng = np.random.default_rng(0)
    drawn = np.bincount([demo._group(rng, demo.FAIRFACE_SHARES) for _ in range(4000)], minlength=9) / 4000
    shares = demo.FAIRFACE_SHARES / demo.FAIRFACE_SHARES.sum()
    assert np.abs(drawn - (shares / 2 + 1 / 18)).max() < 0.025  # 20-29 at ~20%, not at the uniform 11%


def test_the_face_box_spans_the_drawn_head():
    """The box given for a face (LAGENDA, RAF-DB, VGGFace2 crop it) spans what is drawn of the head: from the
    top of the hair to the chin, ears left out (a box as tall as wide cut an adult's chin and hair off)."""
    rng = np.random.default_rng(0)
    for age in (2, 4, 8):
        look = demo.Look(age, 1, np.array([200.0, 150, 120]), np.array([60.0, 40, 20]), False, 0, False)
        img = np.zeros((200, 200, 3), np.uint8)
        x0, y0, x1, y1 = demo.draw_person(img, rng, 100, 100, 30, look, 6, body=False)
        rows = np.flatnonzero(img.any(axis=(1, 2)))
        assert (y0, y1) == pytest.approx((rows[0], rows[-1]), abs=0.06 * (y1 - y0)), age
        assert x1 - x0 == pytest.approx(2.1 * 30)


def test_utkface_names_carry_the_drawn_age_and_gender_and_the_official_odd_variants(drawn):
    raw, _, saved = drawn
    names = sorted(p.name for p in (raw / "utkface" / "UTKFace").iterdir())
    assert len(names) == max(12, round(300 * SCALE)) + 1
    for name in names:
        if name == "unlabelled_face.jpg.chip.jpg":
            continue
        parts = name.split("_")  # dataset-formats.md: age=int(p[0]), gender=int(p[1]) (0 male, 1 female)
        age, gender, _, _ = saved[raw / "utkface" / "UTKFace" / name]
        assert (bin_of(int(parts[0])), int(parts[1])) == (age, gender), name
    # the crop set's malformed names (dataset-formats.md): race-less, a missing dot, a space
    assert sum(bool(re.fullmatch(r"\d+_[01]_\d{17}\.jpg\.chip\.jpg", n)) for n in names) == 1
    assert sum(bool(re.fullmatch(r"\d+_[01]_[0-4]_\d{17}jpg\.chip\.jpg", n)) for n in names) == 1
    assert sum(bool(re.fullmatch(r"\d+_[01]_[0-4]_\d{17} \.jpg\.chip\.jpg", n)) for n in names) == 1
    assert sum(bool(re.fullmatch(r"\d+_[01]_[0-4]_\d{17}\.jpg\.chip\.jpg", n)) for n in names) == len(names) - 4


def test_lagenda_rows_are_the_drawn_persons_with_their_face_boxes(drawn):
    raw, faces, _ = drawn
    lines = (raw / "lagenda" / "lagenda_annotation.csv").read_text().splitlines()
    assert lines[0] == ("img_name,age,gender,face_x0,face_y0,face_x1,face_y1,"
                        "person_x0,person_y0,person_x1,person_y1")
    rows = [line.split(",") for line in lines[1:]]
    assert len(rows) == len(faces["lagenda"])
    for k, (row, (age, gender, _, box)) in enumerate(zip(rows, faces["lagenda"])):
        assert re.fullmatch(r"lag_benchmark/[0-9a-f]{16}\.jpg\.jpg", row[0])
        face, person = [float(v) for v in row[3:7]], [float(v) for v in row[7:11]]
        if k == 0:  # the person whose face is not visible
            assert face == [-1, -1, -1, -1]
        else:
            assert face == pytest.approx(box, abs=0.051)
            assert person[0] <= face[0] < face[2] <= person[2] and person[1] <= face[1] < face[3] <= person[3]
        if row[1] == "-1":  # a crowd person without annotation
            assert row[2] == "-1"
        else:
            assert (bin_of(int(row[1])), row[2]) == (age, "MF"[gender]), row
    written = {str(p.relative_to(raw / "lagenda")) for p in (raw / "lagenda" / "lag_benchmark").iterdir()}
    assert len({row[0] for row in rows} - written) == 1  # like the real CSV, one referenced image is absent


def test_rafdb_label_box_and_attribute_files_are_those_of_the_drawn_face(drawn):
    raw, _, saved = drawn
    basic = raw / "rafdb" / "basic"
    text = (basic / "EmoLabel" / "list_patition_label.txt").read_text()
    assert not text.endswith("\n")  # as released (dataset-formats.md)
    if REF.is_dir():
        assert (REF / "raf-db" / "list_patition_label.txt").read_text().endswith("\n") is False
    lines = text.split("\n")
    n_train, n_test = max(12, round(900 * SCALE)), max(12, round(150 * SCALE))
    assert [line.split()[0] for line in lines] == ([f"train_{i:05d}.jpg" for i in range(1, n_train + 1)]
                                                  + [f"test_{i:04d}.jpg" for i in range(1, n_test + 1)])
    raf_group = [bisect.bisect_right([4, 20, 40, 70], upper) for upper in (2, 9, 19, 29, 39, 49, 59, 69, 95)]
    for line in lines:
        name, label = line.split(" ")
        stem = name[:-4]
        age, gender, emotion, box = saved[basic / "Image" / "original" / name]
        assert int(label) == emotion + 1  # 1 Surprise .. 7 Neutral, emotion 0..6 in the same order
        values = (basic / "Annotation" / "boundingbox" / f"{stem}_boundingbox.txt").read_text().split()
        assert [float(v) for v in values] == pytest.approx(box, abs=0.0051)  # x0 y0 x1 y1
        manual = basic / "Annotation" / "manual" / f"{stem}_manu_attri.txt"
        if stem == "train_00007":
            assert not manual.exists()
            continue
        attr = manual.read_text().splitlines()
        assert len(attr) == 8 and all(re.fullmatch(r"-?[\d.]+\t-?[\d.]+", a) for a in attr[:5])
        assert int(attr[5]) in (gender, 2) and int(attr[6]) in (0, 1, 2)  # gender (2 unsure), race
        assert int(attr[7]) == raf_group[age]  # RAF age group 0: 0-3, 1: 4-19, 2: 20-39, 3: 40-69, 4: 70+
    assert (basic / "Image" / "original" / "train_00003.jpg").stat().st_size == 0


def test_some_rafdb_genders_are_unsure(tmp_path):
    """The annotators' "unsure" (2) is one of the bad inputs prepare must count (about 6% of the faces)."""
    demo.write_rafdb(tmp_path, np.random.default_rng(0), 100, 12)
    shown = [int(p.read_text().splitlines()[5]) for p in (tmp_path / "basic" / "Annotation" / "manual").iterdir()]
    assert set(shown) == {0, 1, 2} and 0 < shown.count(2) < 0.15 * len(shown)


def test_celebahq_folders_are_the_drawn_gender(drawn):
    raw, _, saved = drawn
    root = raw / "celebahq" / "celeba_hq"
    jpgs = sorted(root.rglob("*.jpg"))
    assert len(jpgs) == max(12, round(350 * SCALE)) + max(12, round(60 * SCALE))
    for p in jpgs:
        assert p.parent.name == ("male", "female")[saved[p][1]], p
    [png] = root.rglob("*.png")
    with Image.open(png) as image:
        assert png.parent == root / "train" / "female" and image.mode == "RGBA"


def test_vggface2_files_carry_the_drawn_gender_age_and_loose_box(drawn):
    raw, _, saved = drawn
    root = raw / "vggface2"
    meta = (root / "identity_meta.csv").read_bytes()
    assert meta.endswith(b"\r\n") and meta.count(b"\n") == meta.count(b"\r\n")  # CRLF, as released
    if REF.is_dir():
        assert meta.split(b"\r\n")[0] == (REF / "vggface2" / "identity_meta.csv").read_bytes().split(b"\r\n")[0]
    rows = list(csv.reader(meta.decode().splitlines()[1:], skipinitialspace=True))
    identity = {r[0]: (r[3], r[4]) for r in rows}  # Class_ID -> (Flag, Gender)
    test_list = (root / "test_list.txt").read_bytes().decode()
    assert test_list.endswith("\n") and "\r" not in test_list  # LF, unlike identity_meta.csv
    names = test_list.splitlines()
    assert all(re.fullmatch(r"n\d{6}/\d{4}_01\.jpg", n) for n in names)
    ids = sorted({n.split("/")[0] for n in names})
    assert len(ids) == max(3, round(20 * SCALE)) and len(names) == 15 * len(ids)
    assert ids[0] not in identity and all(identity[i][0] == "0" for i in ids[1:])  # Flag 0 = test
    assert sum(flag == "1" for flag, _ in identity.values()) == 3
    ages = dict(line.split(",") for line in (root / "test.age_detected.csv").read_text().splitlines())
    assert len(ages) == len(names) - 1
    boxes = {line.split(",")[0]: [float(v) for v in line.split(",")[1:]]
             for line in (root / "bb_landmark" / "loose_bb_test.csv").read_text().splitlines()[1:]}
    assert len(boxes) == len(names)
    for n in names:
        age, gender, _, (x0, y0, x1, y1) = saved[root / "test" / n]
        if n.split("/")[0] in identity:
            assert identity[n.split("/")[0]][1] == "mf"[gender], n
        if n in ages:
            assert bin_of(float(ages[n])) == age, n
        assert boxes[n[:-4]] == pytest.approx([x0, y0, x1 - x0, y1 - y0], abs=0.51)  # NAME_ID,X,Y,W,H


def test_images_are_written_in_rgb_order(drawn):
    """Skin is redder than it is blue: the middle of every FairFace chip (JPEG) and the CelebA-HQ PNG read as RGB
    has R > B (a chip written in BGR order reads blue-faced)."""
    raw, _, saved = drawn
    paths = sorted(p for p in saved if p.parent.parent.name == "fairface-img-margin025-trainval"
                   and p.name not in ("5.jpg",) and p.exists())
    paths.append(next((raw / "celebahq").rglob("*.png")))
    for p in paths:
        img = np.asarray(Image.open(p).convert("RGB"), float)
        h, w, _ = img.shape
        patch = img[int(h * .45):int(h * .6), int(w * .4):int(w * .6)]
        assert np.median(patch[..., 0]) > np.median(patch[..., 2]) + 10, p


def test_beards_are_for_adult_men_and_lipstick_for_women():
    rng = np.random.default_rng(0)
    looks = [demo.Look.random(rng, g, sex) for g in range(9) for sex in (0, 1) for _ in range(30)]
    assert all(lk.gender == 0 and lk.age >= 3 for lk in looks if lk.beard)
    assert all(lk.gender == 1 and lk.age >= 2 for lk in looks if lk.lipstick)
    assert any(lk.beard for lk in looks) and any(lk.lipstick for lk in looks)


def test_the_seed_changes_the_data(drawn, tmp_path):
    raw, _, _ = drawn
    other = demo.make_demo(tmp_path / "raw", seed=1, scale=SCALE)
    for rel in ("fairface/fairface_label_train.csv", "vggface2/test.age_detected.csv"):
        assert (other / rel).read_text() != (raw / rel).read_text()
