"""``demo-data``: small procedurally drawn stand-ins for the six datasets, in their native layouts.

    python3 -m replication demo-data --out RAW [--seed 0] [--scale 1]

The real datasets cannot be shipped (licences, size), so the demo profile draws cartoon
faces whose labels are *visible* and learnable, with enough random variation that the
tasks are not trivial (thesis §2.7 datasets, §1.2 tasks):

* age group: head roundness and eye size/height (children), under-eye lines (from 30), forehead
  lines and folds (from 40), grey then white hair and eyebrows (from 40), bald babies;
* gender: hair length (long/short, 8-12% flipped), beard/moustache (some adult men),
  lipstick (some women), eyebrow thickness;
* emotion (RAF-DB order): mouth curve/opening, eyebrow height and slant, eye opening,
  nose wrinkles for disgust.

Everything is written exactly as the real releases are laid out (readers.py docstring), so
``prepare --data-root RAW`` runs the same readers and cropping code as on the real data.
What the demo exercises per dataset (prepare --detector boxes, since the SSD weights are
not available offline):

* fairface  128 px face chips, label CSVs        -> whole image (no boxes are shipped)
* utkface   128 px face chips, labels in names    -> whole image
* celebahq  160 px face chips, StarGAN folders     -> whole image
* lagenda   160 px scenes, 1-3 persons, CSV boxes -> provided face boxes
* rafdb     140-160 px scenes, boundingbox files  -> provided boxes
* vggface2  loose crops, loose_bb_test.csv        -> provided boxes

Deliberately bad items (so report.json shows every skip reason): FairFace an Excel-mangled
age label, a truncated JPEG and a label row whose image is missing; UTKFace a grayscale
image, an unparseable name and the official odd-name variants; LAGENDA unannotated
persons, a person without face box, a row whose image is missing; RAF-DB a zero-byte image,
"unsure" genders and one missing attribute file; CelebA-HQ a PNG with alpha; VGGFace2 an
identity absent from identity_meta and an image without MIVIA age.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from replication.arguments import HelpFormatter, number, reported
from replication.files import check_writable
from replication.labels import DATASETS, age_to_group

from .readers import FAIRFACE_AGES

AGE_SPANS = [(0, 2), (3, 9), (10, 19), (20, 29), (30, 39), (40, 49), (50, 59), (60, 69), (70, 95)]
SKINS = [(236, 206, 180), (222, 184, 150), (190, 140, 105), (141, 96, 70), (96, 64, 48)]
HAIRS = [(30, 25, 20), (70, 45, 25), (120, 80, 40), (200, 165, 95), (150, 60, 30)]
GREY = np.array([215.0, 215.0, 210.0])
# Real FairFace train shares (fairface_label_train.csv) mixed with uniform: skewed, every class present.
FAIRFACE_SHARES = np.array([1792, 10408, 9103, 25598, 19250, 10744, 6228, 2779, 842], float)
RAFDB_SHARES = np.array([1290, 281, 717, 4772, 1982, 705, 2524], float)


def _mix(shares: np.ndarray) -> np.ndarray:
    return 0.5 * shares / shares.sum() + 0.5 / len(shares)


@dataclass
class Look:
    """What identifies a person (shared by all images of a VGGFace2 identity)."""

    age: int  # group 0..8
    gender: int  # 0 male, 1 female
    skin: np.ndarray
    hair: np.ndarray
    long_hair: bool
    beard: int  # 0 none, 1 moustache, 2 full beard
    lipstick: bool

    @classmethod
    def random(cls, rng: np.random.Generator, age: int, gender: int) -> "Look":
        grey = np.clip([0, 0, 0, 0, .05, .3, .6, .8, .95][age] + rng.normal(0, .12), 0, 1)
        hair = (1 - grey) * np.array(HAIRS[rng.integers(len(HAIRS))], float) + grey * GREY
        skin = np.array(SKINS[rng.integers(len(SKINS))], float) + rng.normal(0, 6, 3)
        long_hair = rng.random() < ((.3 if age == 0 else .88) if gender else .1)
        beard = int(rng.choice(3, p=[.45, .2, .35])) if gender == 0 and age >= 3 else 0
        return cls(age, gender, skin, hair, bool(long_hair), beard, gender == 1 and age >= 2 and rng.random() < .6)


def _c(rgb) -> tuple[int, ...]:
    return tuple(int(v) for v in np.clip(rgb, 0, 255))


def draw_person(img: np.ndarray, rng: np.random.Generator, cx: float, cy: float, u: float,
                look: Look, emotion: int, body: bool = True) -> tuple[float, float, float, float]:
    """Draw a face centred at (cx, cy) with half-width u; returns its face box (x0, y0, x1, y1)."""
    g, j = look.age, lambda s: 1 + rng.normal(0, s)  # j: multiplicative jitter
    hr = u * [1.0, 1.08, 1.18, 1.24, 1.26, 1.27, 1.28, 1.28, 1.28][g] * j(.03)  # head half-height
    t = max(1, round(u / 14))
    P = lambda x, y: (round(x), round(y))  # noqa: E731
    skin, line = _c(look.skin), _c(look.skin * .62)
    if body:
        cv2.ellipse(img, P(cx, cy + hr + 1.2 * u), P(1.8 * u, 1.1 * u), 0, 180, 360,
                    _c(rng.integers(30, 220, 3)), -1)
        cv2.rectangle(img, P(cx - .35 * u, cy + .6 * hr), P(cx + .35 * u, cy + hr + .3 * u), skin, -1)
    if look.long_hair:
        cv2.ellipse(img, P(cx, cy + .3 * hr), P(1.3 * u, 1.45 * hr), 0, 0, 360, _c(look.hair), -1)
    cv2.ellipse(img, P(cx - u, cy), P(.18 * u, .28 * u), 0, 0, 360, line, -1)  # ears
    cv2.ellipse(img, P(cx + u, cy), P(.18 * u, .28 * u), 0, 0, 360, line, -1)
    cv2.ellipse(img, P(cx, cy), P(u, hr), 0, 0, 360, skin, -1)
    if g == 0:  # babies: a few strands
        for k in range(3):
            cv2.ellipse(img, P(cx + (k - 1) * .15 * u, cy - hr), P(.12 * u, .2 * u), 0, 180, 330, _c(look.hair), t)
    else:
        cv2.ellipse(img, P(cx, cy - .5 * hr), P(1.04 * u, .62 * hr), 0, 180, 360, _c(look.hair), -1)
    # age lines: under-eye from 30s, forehead from 40s (one more per decade), folds from 40s
    n_lines = max(0, g - 4 + int(rng.random() < .25) - int(rng.random() < .25))
    for k in range(min(n_lines, 4)):
        y = cy - .62 * hr + k * .09 * u
        cv2.line(img, P(cx - .4 * u, y), P(cx + .4 * u, y), line, t)
    kid = g <= 1
    ey = cy + (.04 * u if kid else -.12 * hr)
    er = u * [.19, .16, .13, .12, .12, .12, .12, .12, .12][g] * j(.05)
    opening = [1.5, 1.35, .75, .65, .8, .7, 1.0][emotion] * j(.08)
    # brow cues strong enough to survive the demo's 64 px crops (fainter ones left the tiny
    # encoder's frozen-feature probes at chance on emotion)
    raise_ = 1.5 * [.14, .1, -.04, .02, .03, -.07, 0][emotion] * u
    tilt = 1.5 * [0, -.1, .04, 0, -.1, .13, 0][emotion] * u  # + = inner end down (frown)
    brow = _c(look.hair * .8 if g >= 5 else look.hair * .5)
    for side in (-1, 1):
        ex = cx + side * .38 * u
        if g >= 4:
            cv2.ellipse(img, P(ex, ey + 1.3 * er), P(er, .4 * er), 0, 20, 160, line, 1)
        cv2.ellipse(img, P(ex, ey), P(1.3 * er, max(er * opening, 1)), 0, 0, 360, (250, 250, 250), -1)
        cv2.circle(img, P(ex, ey), max(1, int(.6 * er * min(opening, 1))), (40, 30, 25), -1)
        by = ey - 1.2 * er - .12 * u - raise_
        cv2.line(img, P(ex + side * .2 * u, by), P(ex - side * .17 * u, by + tilt), brow,
                 t + (1 if look.gender == 0 else 0) + (1 if u > 30 and look.gender == 0 else 0))
    if kid:
        for side in (-1, 1):
            cv2.circle(img, P(cx + side * .55 * u, cy + .3 * hr), max(1, int(.14 * u)), (235, 150, 150), -1)
    ny = cy + .2 * hr
    cv2.line(img, P(cx, ey + .1 * u), P(cx - .07 * u, ny), line, t)
    cv2.line(img, P(cx - .07 * u, ny), P(cx + .06 * u, ny), line, t)
    if emotion == 2:  # disgust: wrinkled nose
        for k in range(2):
            cv2.line(img, P(cx - .1 * u, ey + (.12 + .07 * k) * u), P(cx + .1 * u, ey + (.12 + .07 * k) * u), line, t)
    if g >= 5:  # nasolabial folds
        for side in (-1, 1):
            cv2.line(img, P(cx + side * .15 * u, ny), P(cx + side * .38 * u, cy + .62 * hr), line, t)
    my, mw = cy + .5 * hr, .33 * u * j(.06)
    if look.beard == 2:
        cv2.ellipse(img, P(cx, cy + .3 * hr), P(.95 * u, .72 * hr), 0, 0, 180, _c(look.hair), -1)
    if look.beard >= 1:
        cv2.ellipse(img, P(cx, my - .08 * u), P(mw * 1.1, .08 * u), 0, 180, 360, _c(look.hair), max(2, 2 * t))
    lips = (200, 40, 70) if look.lipstick else _c(look.skin * .55)
    # mouth strokes 3t wide, for the same reason as the brows above
    dark = (60, 20, 25)
    if emotion == 0:  # surprise: round open mouth
        cv2.ellipse(img, P(cx, my), P(.15 * u, .22 * u), 0, 0, 360, dark, -1)
        cv2.ellipse(img, P(cx, my), P(.15 * u, .22 * u), 0, 0, 360, lips, t)
    elif emotion == 1:  # fear: wide, stretched open mouth
        cv2.ellipse(img, P(cx, my), P(mw * 1.2, .09 * u), 0, 0, 360, dark, -1)
        cv2.line(img, P(cx - mw, my), P(cx + mw, my), (240, 240, 240), t)
    elif emotion == 2:  # disgust: asymmetric, one corner raised
        pts = np.array([P(cx - mw, my + .04 * u), P(cx, my), P(cx + mw, my - .12 * u)], np.int32)
        cv2.polylines(img, [pts], False, lips, 3 * t)
    elif emotion == 3:  # happy: smile
        cv2.ellipse(img, P(cx, my - .1 * u), P(mw, .2 * u), 0, 10, 170, lips, 3 * t)
    elif emotion == 4:  # sad: frown
        cv2.ellipse(img, P(cx, my + .12 * u), P(mw * .9, .14 * u), 0, 190, 350, lips, 3 * t)
    elif emotion == 5:  # angry: tight line, corners down
        pts = np.array([P(cx - mw, my + .07 * u), P(cx - .6 * mw, my), P(cx + .6 * mw, my),
                        P(cx + mw, my + .07 * u)], np.int32)
        cv2.polylines(img, [pts], False, lips, 3 * t)
    else:  # neutral
        cv2.line(img, P(cx - mw * .9, my), P(cx + mw * .9, my), lips, 3 * t)
    return (cx - 1.05 * u, cy - 1.05 * hr, cx + 1.05 * u, cy + 1.05 * hr)


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    a, b = rng.integers(40, 230, 3), rng.integers(40, 230, 3)
    ramp = np.linspace(0, 1, h)[:, None, None]
    img = np.broadcast_to(a * (1 - ramp) + b * ramp, (h, w, 3)).astype(np.uint8).copy()
    for _ in range(rng.integers(0, 4)):  # clutter
        x, y = rng.integers(0, w), rng.integers(0, h)
        cv2.rectangle(img, (int(x), int(y)), (int(x + rng.integers(10, 50)), int(y + rng.integers(10, 50))),
                      _c(rng.integers(0, 255, 3)), -1)
    return img


def _finish(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """Camera-like nuisance: blur sometimes, brightness/contrast jitter, sensor noise."""
    if rng.random() < .3:
        img = cv2.GaussianBlur(img, (3, 3), 0)
    out = img.astype(np.float32) * rng.uniform(.8, 1.15) + rng.uniform(-20, 20) + rng.normal(0, 5, img.shape)
    return np.clip(out, 0, 255).astype(np.uint8)


def _save(img: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, data = cv2.imencode(".jpg", img[:, :, ::-1] if img.ndim == 3 else img, [cv2.IMWRITE_JPEG_QUALITY, 90])
    if not ok:
        raise RuntimeError(f"JPEG encoding failed for {path}")
    path.write_bytes(data.tobytes())


def chip(rng, size: int, look: Look, emotion: int) -> np.ndarray:
    """An aligned face chip: the face centred and filling most of the image."""
    img = _background(rng, size, size)
    u = size * .29 * (1 + rng.normal(0, .04))
    draw_person(img, rng, size / 2 + rng.normal(0, size * .02), size * .45 + rng.normal(0, size * .02), u,
                look, emotion)
    return _finish(rng, img)


def _group(rng, shares: np.ndarray | None = None) -> int:
    return int(rng.choice(9, p=_mix(shares) if shares is not None else None))


def _other_emotion(rng) -> int:
    """Emotions of the non-RAF datasets are nuisance: mostly neutral or happy."""
    return int(rng.choice(7, p=[.05, .03, .03, .35, .07, .05, .42]))


# ---------------------------------------------------------------- one writer per dataset

def write_fairface(root: Path, rng, n_train: int, n_val: int) -> None:
    ages = list(FAIRFACE_AGES)
    races = ["White", "Black", "Latino_Hispanic", "East Asian", "Southeast Asian", "Indian", "Middle Eastern"]
    images = root / "fairface-img-margin025-trainval"
    for split, n in (("train", n_train), ("val", n_val)):
        lines = ["file,age,gender,race,service_test"]
        for i in range(1, n + 1):
            g, sex = _group(rng, FAIRFACE_SHARES), int(rng.integers(2))
            name = f"{split}/{i}.jpg"
            _save(chip(rng, 128, Look.random(rng, g, sex), _other_emotion(rng)), images / name)
            lines.append(f"{name},{ages[g]},{('Male', 'Female')[sex]},{races[rng.integers(7)]},{rng.random() < .5}")
        if split == "train":
            parts = lines[3].split(",")
            lines[3] = ",".join([parts[0], "03-Sep", *parts[2:]])  # an Excel-mangled "3-9"
            data = (images / "train/5.jpg").read_bytes()
            (images / "train/5.jpg").write_bytes(data[: len(data) // 2])  # truncated JPEG
        else:
            (images / "val/2.jpg").unlink()  # label row whose image is missing
        (root / f"fairface_label_{split}.csv").write_text("\n".join(lines) + "\n")


def write_utkface(root: Path, rng, n: int) -> None:
    folder = root / "UTKFace"
    for i in range(n):
        g, sex = _group(rng), int(rng.integers(2))
        age = int(rng.integers(AGE_SPANS[g][0], AGE_SPANS[g][1] + 1))
        stamp = f"2017011{rng.integers(0, 10)}{rng.integers(10**8, 10**9)}"
        name = f"{age}_{sex}_{rng.integers(5)}_{stamp}.jpg.chip.jpg"
        # the official set's odd names: race-less, missing dot, a space
        name = {0: f"{age}_{sex}_{stamp}.jpg.chip.jpg", 1: f"{age}_{sex}_0_{stamp}jpg.chip.jpg",
                2: f"{age}_{sex}_1_{stamp} .jpg.chip.jpg"}.get(i, name)
        img = chip(rng, 128, Look.random(rng, g, sex), _other_emotion(rng))
        _save(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY) if i == 3 else img, folder / name)
    _save(chip(rng, 128, Look.random(rng, 4, 0), 6), folder / "unlabelled_face.jpg.chip.jpg")


def write_lagenda(root: Path, rng, n_images: int) -> None:
    lines = ["img_name,age,gender,face_x0,face_y0,face_x1,face_y1,person_x0,person_y0,person_x1,person_y1"]
    for i in range(n_images):
        name = f"lag_benchmark/{rng.bytes(8).hex()}.jpg.jpg"
        img = _background(rng, 160, 160)
        n = int(rng.integers(1, 4))
        for k in range(n):
            g, sex = _group(rng), int(rng.integers(2))
            u = [9, 10, 11.5, 12.5, 12.5, 12.5, 12.5, 12.5, 12.5][g] * rng.uniform(1.0, 1.45)
            cx = (k + .5) * 160 / n + rng.normal(0, 4)
            cy = rng.uniform(35, 80)
            box = draw_person(img, rng, cx, cy, u, Look.random(rng, g, sex), _other_emotion(rng))
            person = (box[0] - u, box[1], box[2] + u, 160)
            age, gender = int(rng.integers(AGE_SPANS[g][0], AGE_SPANS[g][1] + 1)), "MF"[sex]
            if i == 0 and k == 0:  # a person whose face is not visible
                box = (-1, -1, -1, -1)
            elif rng.random() < .1:  # crowd without annotation
                age, gender = -1, "-1"
            lines.append(",".join([name, str(age), gender, *(f"{v:.1f}" for v in (*box, *person))]))
        if i != 1:  # like the real CSV, one referenced image is absent
            _save(_finish(rng, img), root / name)
    (root / "lagenda_annotation.csv").write_text("\n".join(lines) + "\n")


def write_rafdb(root: Path, rng, n_train: int, n_test: int) -> None:
    basic = root / "basic"
    lines = []
    raf_age = [0, 1, 1, 2, 2, 3, 3, 3, 4]
    for split, n, width in (("train", n_train, 5), ("test", n_test, 4)):
        for i in range(1, n + 1):
            stem = f"{split}_{i:0{width}d}"
            emotion = int(rng.choice(7, p=_mix(RAFDB_SHARES)))
            g, sex = _group(rng), int(rng.integers(2))
            h, w = int(rng.integers(140, 161)), int(rng.integers(140, 161))
            img = _background(rng, h, w)
            u = rng.uniform(26, 36)
            cx, cy = rng.uniform(u + 10, w - u - 10), rng.uniform(u + 15, h - u - 30)
            box = draw_person(img, rng, cx, cy, u, Look.random(rng, g, sex), emotion)
            _save(_finish(rng, img), basic / "Image" / "original" / f"{stem}.jpg")
            lines.append(f"{stem}.jpg {emotion + 1}")
            (basic / "Annotation" / "boundingbox").mkdir(parents=True, exist_ok=True)
            (basic / "Annotation" / "boundingbox" / f"{stem}_boundingbox.txt").write_text(
                " ".join(f"{v:.2f}" for v in box) + "\n")
            marks = [(cx - .38 * u, cy - .15 * u), (cx + .38 * u, cy - .15 * u), (cx, cy + .25 * u),
                     (cx - .33 * u, cy + .62 * u), (cx + .33 * u, cy + .62 * u)]
            shown = 2 if rng.random() < .06 else sex  # annotators' "unsure"
            manual = [f"{x:.2f}\t{y:.2f}" for x, y in marks] + [str(shown), str(rng.integers(3)), str(raf_age[g])]
            if stem != "train_00007":  # one attribute file missing
                (basic / "Annotation" / "manual").mkdir(parents=True, exist_ok=True)
                (basic / "Annotation" / "manual" / f"{stem}_manu_attri.txt").write_text("\n".join(manual) + "\n")
    (basic / "Image" / "original" / "train_00003.jpg").write_bytes(b"")  # zero-byte file
    (basic / "EmoLabel").mkdir(parents=True, exist_ok=True)
    (basic / "EmoLabel" / "list_patition_label.txt").write_text("\n".join(lines))  # no final newline, as released


def write_celebahq(root: Path, rng, n_train: int, n_val: int) -> None:
    index = 0
    for split, n in (("train", n_train), ("val", n_val)):
        for i in range(n):
            sex = int(rng.random() < .63) if split == "train" else i % 2  # CelebA-HQ: 63% female
            img = chip(rng, 160, Look.random(rng, int(rng.choice([2, 3, 3, 4, 4, 5, 6])), sex), _other_emotion(rng))
            _save(img, root / "celeba_hq" / split / ("male", "female")[sex] / f"{index:06d}.jpg")
            index += 1
    rgba = np.dstack([chip(rng, 160, Look.random(rng, 3, 1), 3), np.full((160, 160), 200, np.uint8)])
    cv2.imwrite(str(root / "celeba_hq" / "train" / "female" / f"{index:06d}.png"), rgba[:, :, [2, 1, 0, 3]])


def write_vggface2(root: Path, rng, n_ids: int, per_id: int) -> None:
    meta = ["Class_ID, Name, Sample_Num, Flag, Gender"]
    test_list, ages, boxes = [], [], ["NAME_ID,X,Y,W,H"]
    for k in range(n_ids + 3):
        cid, sex = f"n{k * 7 + 1:06d}", int(rng.random() < .4)
        flag = int(k >= n_ids)  # the last three are train identities (not in test_list)
        meta.append(f'{cid}," ""Person_{k}""",{per_id},{flag}, {"mf"[sex]}')
        if flag:
            continue
        base = int(rng.choice(range(18, 80)))
        look = Look.random(rng, age_to_group(base), sex)
        for i in range(1, per_id + 1):
            name = f"{cid}/{i:04d}_01.jpg"
            age = float(np.clip(base + rng.normal(0, 3), 1, 95))
            look.age = age_to_group(age)  # the group of this image's age, which the MIVIA file records
            h, w = int(rng.integers(120, 161)), int(rng.integers(110, 151))
            img = _background(rng, h, w)
            u = rng.uniform(26, 36)
            x0, y0, x1, y1 = draw_person(img, rng, w / 2 + rng.normal(0, 5), h * .45 + rng.normal(0, 5), u,
                                         look, _other_emotion(rng))
            _save(_finish(rng, img), root / "test" / name)
            test_list.append(name)
            if (k, i) != (1, 1):  # one image without an age estimate
                ages.append(f"{name},{age:.3f}")
            boxes.append(f"{name[:-4]},{x0:.0f},{y0:.0f},{x1 - x0:.0f},{y1 - y0:.0f}")
    meta.pop(1)  # the first test identity is missing from identity_meta -> unknown_identity
    (root / "identity_meta.csv").write_bytes(("\r\n".join(meta) + "\r\n").encode())
    (root / "test_list.txt").write_text("\n".join(test_list) + "\n")
    (root / "test.age_detected.csv").write_text("\n".join(ages) + "\n")
    (root / "bb_landmark").mkdir(exist_ok=True)
    (root / "bb_landmark" / "loose_bb_test.csv").write_text("\n".join(boxes) + "\n")


def make_demo(out: str | Path, seed: int = 0, scale: float = 1) -> Path:
    """Write all six demo datasets under ``out`` (deterministic for a given seed and scale).

    scale 1 gives 200 (LAGENDA, up to three persons each) to 1,050 (RAF-DB) images per dataset; tests use
    fractions (at least 12 per split).
    """
    out = Path(out)
    rng = {d: np.random.default_rng([seed, i]) for i, d in enumerate(DATASETS)}
    n = lambda base: max(12, round(base * scale))  # noqa: E731
    write_fairface(out / "fairface", rng["fairface"], n(400), n(150))
    write_utkface(out / "utkface", rng["utkface"], n(300))
    write_lagenda(out / "lagenda", rng["lagenda"], n(200))
    # RAF-DB is the only emotion source: 900 raw training images (~670 training crops) so the demo's
    # emotion runs and the pre-training see enough examples of each class (400 left probes near chance)
    write_rafdb(out / "rafdb", rng["rafdb"], n(900), n(150))
    write_celebahq(out / "celebahq", rng["celebahq"], n(350), n(60))
    write_vggface2(out / "vggface2", rng["vggface2"], max(3, round(20 * scale)), 15)
    return out


def cli(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m replication demo-data", description=__doc__.split("\n\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("--out", required=True, help="raw data root to write (one folder per dataset)")
    p.add_argument("--seed", type=number(int, 0), default=0, help="seed of every face, label and file drawn")
    p.add_argument("--scale", type=number(float, 0, above=True), default=1.0, help="multiply every dataset's size")
    a = p.parse_args(argv)
    return reported("demo-data", lambda: _demo_data(Path(a.out), a.seed, a.scale), (OSError,))


def _demo_data(out: Path, seed: int, scale: float) -> int:
    check_writable(out, "folder")
    if out.is_dir() and any(out.iterdir()):  # files of another seed or scale would stay among the new ones
        raise FileExistsError(f"{out} is not empty; expected a new or empty folder")
    start = time.perf_counter()
    make_demo(out, seed, scale)
    n = sum(1 for f in out.rglob("*") if f.suffix in (".jpg", ".png"))
    print(f"wrote {n} demo images under {out} in {time.perf_counter() - start:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(cli())
