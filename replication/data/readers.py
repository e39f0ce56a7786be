"""Readers for the six datasets of thesis §2.7, each in its officially released layout.

Every reader turns label files into ``Record``s carrying the thesis's class ids
(``replication.labels``: age 0..8, gender 0 male / 1 female, emotion 0..6, -1 missing)
and the dataset's *official* split. Rows that cannot become a record are not dropped
silently: they are collected in ``ReadResult.skipped`` (reason -> offending names), and
``rows_read == len(records) + sum(len(v) for v in skipped.values())`` always holds.

Readers only parse labels; whether an image file exists and decodes is checked when it
is cropped (``prepare.py``), so the count tests can run on label files alone.
Where each dataset is downloaded from: README, "Full replication, step by step", step 1.

Expected layout under the raw data root (one folder per dataset id):

    fairface/  fairface_label_{train,val}.csv, fairface-img-margin025-trainval/{train,val}/N.jpg
    utkface/   part1..3/<age>_<gender>_<race>_<datetime>.jpg   (in-the-wild), or
               UTKFace/<age>_<gender>_<race>_<datetime>.jpg.chip.jpg   (aligned chips)
    lagenda/   lagenda_annotation.csv, lag_benchmark/<hash>.jpg.jpg
    rafdb/     basic/EmoLabel/list_patition_label.txt, basic/Image/original/*.jpg,
               basic/Annotation/manual/*_manu_attri.txt, [basic/Annotation/boundingbox/*]
    celebahq/  celeba_hq/{train,val}/{female,male}/*.jpg   (StarGAN v2), or
               CelebAMask-HQ/{CelebA-HQ-img/N.jpg, CelebAMask-HQ-attribute-anno.txt}
    vggface2/  test_list.txt, identity_meta.csv, test/nXXXXXX/*.jpg,
               test.age_detected.csv (MIVIA ages), [bb_landmark/loose_bb_test.csv]
"""
from __future__ import annotations

import csv
import io
import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

from replication.files import read_text
from replication.labels import AGE_GROUPS, MISSING, age_to_group

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels


@dataclass(frozen=True)
class Record:
    """One labelled face: where its image is, its official split and its class ids."""

    dataset: str
    image: Path  # source image file
    name: str  # the name the label file uses (shown in the report)
    key: str  # unique, filesystem-safe id -> crop file name
    split: str  # official split: train | val | test | all (no official split)
    age: int = MISSING
    gender: int = MISSING
    emotion: int = MISSING
    box: Box | None = None  # face box shipped with the dataset, if any


@dataclass
class ReadResult:
    dataset: str
    rows_read: int = 0
    records: list[Record] = field(default_factory=list)
    skipped: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    notes: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))

    def skip(self, reason: str, name: str) -> None:
        self.skipped[reason].append(name)


def safe_key(text: str) -> str:
    """File-system safe crop name: path separators and odd characters become '_'."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")


def _need(path: Path, what: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: expected {path}")
    return path


def _label_text(path: Path, what: str) -> str:
    """The text of label file ``path``, which is the dataset's ``what``: a missing file and one that is not UTF-8
    text (files.read_text) are errors naming it."""
    return read_text(_need(path, what), f"the {what} as released")


def _csv_rows(f, path: Path, expected: str, **fmt) -> Iterator[tuple[int, list[str]]]:
    """(line, fields) for each row of the CSV label file ``path``, open as ``f`` (``fmt``: csv.reader's format
    arguments); a blank line is a row without fields. No label file holds a line break inside a field, so a row
    that runs on past its line is a quote left open, which would swallow the rows after it (one skipped row, named
    by the last line, or rows merged into another's values): it stops with the line it began on and ``expected``,
    and so does csv's own error (such a quote swallowing more than csv's field size limit, which named no file)."""
    rows = csv.reader(f, **fmt)
    end = 0  # the line the previous row ended on
    try:
        for row in rows:
            line_no, end = end + 1, rows.line_num
            if end != line_no:  # csv reads on over line breaks inside quotes
                raise ValueError(f"{path} line {line_no}: the row runs on to line {end} (a quote left open?); "
                                 f"{expected}")
            yield line_no, row
    except csv.Error as err:
        raise ValueError(f"{path} line {end + 1}: {err}; {expected}") from None


def _csv_with_columns(f, path: Path, columns: tuple[str, ...], item: str
                      ) -> tuple[list[str], Iterator[tuple[int, dict]]]:
    """The header of the open ``f`` (read from ``path``), which must hold ``columns``, else a ValueError naming the
    file and what it lacks (an empty file has no header at all: said as such, not as header None); and (line, row)
    for each line after it that is not blank, one ``item`` per line (_csv_rows), the row a dict as csv.DictReader
    gives it: fields beyond the header's under the key None, those short of it None."""
    rows = _csv_rows(f, path, f"expected one {item} per line with the columns {', '.join(columns)}")
    header = next(rows, (1, None))[1]
    if header is None:
        raise ValueError(f"{path}: the file is empty; expected a header with the columns {', '.join(columns)}")
    missing = set(columns) - set(header)
    if missing:
        raise ValueError(f"{path}: header {header} lacks columns {sorted(missing)}")

    def as_dicts():
        for line_no, fields in rows:
            if fields:
                row = dict(zip(header, fields))
                if len(fields) > len(header):
                    row[None] = fields[len(header):]
                yield line_no, row | dict.fromkeys(header[len(fields):])

    return header, as_dicts()


def _field_count_problem(row: dict, header: list[str]) -> str | None:
    """What to say of a _csv_with_columns row with fields beyond the header's (its key None) or short of them
    (values None), whose columns may be shifted, so that even values that parse may be another column's; None if
    whole."""
    extra, short = len(row.pop(None, [])), sum(v is None for v in row.values())
    if not (extra or short):
        return None
    return f"{len(header) + extra - short} fields, expected the header's {len(header)} ({','.join(header)})"


def _first_existing(paths: Iterable[Path]) -> Path | None:
    return next((p for p in paths if p.exists()), None)


def box_has_area(box: Box) -> bool:
    """False for LAGENDA's -1 placeholder and any box with non-positive (or non-finite) width or
    height: cropping one would give a 1x1 junk crop that looks valid. One check for every dataset."""
    x0, y0, x1, y1 = box
    return all(math.isfinite(v) for v in box) and x1 > x0 and y1 > y0


# ---------------------------------------------------------------- FairFace

# The official CSV spells the last bin "more than 70" (the thesis's 70+).
FAIRFACE_AGES = {name: i for i, name in enumerate(AGE_GROUPS[:-1])} | {"more than 70": 8}
FAIRFACE_GENDERS = {"Male": 0, "Female": 1}
FAIRFACE_IMAGE_FOLDERS = ("fairface-img-margin025-trainval", "fairface-img-margin125-trainval")


def read_fairface_csv(label_csv: Path, image_root: Path, result: ReadResult) -> None:
    """Append the rows of one ``fairface_label_{train,val}.csv`` (split = its name's part)."""
    split = "train" if "train" in label_csv.name else "val"
    with io.StringIO(_label_text(label_csv, "FairFace label CSV"), newline="") as f:
        header, rows = _csv_with_columns(f, label_csv, ("file", "age", "gender"), "image")
        for line_no, row in rows:
            result.rows_read += 1
            name = row["file"]
            where = f"{name} (line {line_no})"  # as LAGENDA's skips: the row to look at in the file
            problem = _field_count_problem(row, header)  # skipped and counted like the other bad label rows
            if problem:
                result.skip("unknown_label", f"{where}: {problem}")
                continue
            age, gender = FAIRFACE_AGES.get(row["age"]), FAIRFACE_GENDERS.get(row["gender"])
            if age is None or gender is None:
                # e.g. Excel-mangled copies ("03-Sep" for "3-9"): refuse, never guess.
                result.skip("unknown_label", f"{where} age={row['age']!r}, gender={row['gender']!r}")
                continue
            result.records.append(Record("fairface", image_root / name, name, safe_key(name[:-4]),
                                         split, age=age, gender=gender))


def read_fairface(folder: Path) -> ReadResult:
    result = ReadResult("fairface")
    image_root = _first_existing(folder / d for d in FAIRFACE_IMAGE_FOLDERS) or folder
    for split in ("train", "val"):
        read_fairface_csv(folder / f"fairface_label_{split}.csv", image_root, result)
    return result


# ---------------------------------------------------------------- UTKFace

def parse_utkface_name(name: str) -> tuple[int, int] | None:
    """(age years, gender) from ``age_gender_race_datetime.jpg.chip.jpg``, None if malformed.

    Only the first two fields are trusted: a few official names lack the race field or
    have odd timestamps, which must not lose the sample.
    """
    parts = name.split("_")
    try:
        age, gender = int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        return None
    return (age, gender) if age >= 0 and gender in (0, 1) else None


def read_utkface_names(names: Iterable[str], image_dir: Path, result: ReadResult) -> None:
    for name in names:
        result.rows_read += 1
        parsed = parse_utkface_name(name)
        if parsed is None:
            result.skip("bad_file_name", name)
            continue
        age, gender = parsed
        stem = name.split(".jpg")[0]
        result.records.append(Record("utkface", image_dir / name, name, safe_key(stem), "all",
                                     age=age_to_group(age), gender=gender))


def read_utkface(folder: Path) -> ReadResult:
    """The in-the-wild ``part1..3`` folders if present, else the aligned ``UTKFace/`` folder.

    §2.7.2 counts 24,103 UTKFace images, which is not the 23,708 aligned chips and so probably the
    in-the-wild release (whose exact count is unverified); reading the chips is noted in the report.
    """
    result = ReadResult("utkface")
    dirs = sorted(d for d in folder.glob("part[0-9]") if d.is_dir())
    if not dirs and (folder / "UTKFace").is_dir():
        dirs = [folder / "UTKFace"]
        result.notes["aligned_chips_used"].append(
            f"{dirs[0]}: the aligned chips (23,708 in the release) are used; §2.7.2 counts 24,103 "
            "in-the-wild images (part1..3/)")
    if not dirs:
        raise FileNotFoundError(f"UTKFace images not found: expected {folder}/part1/ (in-the-wild, "
                                f"probably the thesis's 24,103 images) or {folder}/UTKFace/ (aligned chips)")
    for d in dirs:
        read_utkface_names(sorted(p.name for p in d.iterdir() if p.is_file()), d, result)
    return result


# ---------------------------------------------------------------- LAGENDA

LAGENDA_GENDERS = {"M": 0, "F": 1}


def read_lagenda(folder: Path) -> ReadResult:
    """One record per annotated person with both labels and a face box (§2.7: provided boxes).

    Rows are persons, several per image; unlabelled persons (-1) are counted as skipped.
    """
    result = ReadResult("lagenda")
    path = folder / "lagenda_annotation.csv"
    box_cols = ("face_x0", "face_y0", "face_x1", "face_y1")
    with io.StringIO(_label_text(path, "LAGENDA annotation CSV"), newline="") as f:
        header, rows = _csv_with_columns(f, path, ("img_name", "age", "gender", *box_cols), "person")
        for row_no, row in rows:  # the file's line, which a blank line above does not shift
            result.rows_read += 1
            name = f"{row['img_name']} (line {row_no})"
            problem = _field_count_problem(row, header)
            if problem:
                result.skip("unknown_label", f"{name}: {problem}")
                continue
            try:
                age = float(row["age"])
                box = tuple(float(row[c]) for c in box_cols)
            except ValueError:
                result.skip("unknown_label", f"{name} age={row['age']!r} box={tuple(row[c] for c in box_cols)}")
                continue
            if not math.isfinite(age):  # "nan"/"inf" parse as floats but are no age
                result.skip("unknown_label", f"{name} age={row['age']!r}")
                continue
            gender = LAGENDA_GENDERS.get(row["gender"].strip())
            if gender is None and row["gender"].strip() != "-1":
                result.skip("unknown_label", f"{name} gender={row['gender']!r}")
            elif age < 0 and gender is None:
                result.skip("not_annotated", name)
            elif age < 0 or gender is None:
                # Table 3.2: every LAGENDA sample has both labels (its age and gender
                # totals both include the same 80% of LAGENDA).
                result.skip("missing_age" if age < 0 else "missing_gender", name)
            elif not box_has_area(box):  # -1,-1,-1,-1 is LAGENDA's "no face box"
                result.skip("no_face_box", name)
            else:
                stem = Path(row["img_name"]).name.split(".")[0]
                result.records.append(Record("lagenda", folder / row["img_name"], name,
                                             f"{safe_key(stem)}_{row_no}", "all",
                                             age=age_to_group(age), gender=gender, box=box))
    return result


# ---------------------------------------------------------------- RAF-DB basic

RAFDB_LABELS = {str(i) for i in range(1, 8)}  # 1 Surprise ... 7 Neutral = thesis order + 1
RAFDB_LIST_NAMES = ("list_patition_label.txt", "list_partition_label.txt")  # real name has the typo


def read_rafdb_manual_gender(path: Path) -> int | None:
    """Line 6 of ``*_manu_attri.txt``: 0 male, 1 female, 2 unsure (returned as 2)."""
    lines = [line.strip() for line in _label_text(path, "RAF-DB manual attribute file").splitlines() if line.strip()]
    if len(lines) < 6 or lines[5] not in ("0", "1", "2"):
        return None
    return int(lines[5])


def parse_rafdb_box(path: Path) -> Box:
    """``<name>_boundingbox.txt``: 4 numbers ``x0 y0 x1 y1``.

    A corrupt box file stops the run (as VGGFace2's ``parse_loose_boxes`` does) rather than
    silently sending its image to the SSD."""
    lines = _label_text(path, "RAF-DB bounding box file").splitlines()
    values = [(line_no, v) for line_no, line in enumerate(lines, start=1) for v in line.split()][:4]
    for line_no, v in values:
        try:
            float(v)
        except ValueError:
            raise ValueError(f"{path} line {line_no}: expected 4 numbers x0 y0 x1 y1, got {v!r}") from None
    if len(values) < 4:
        raise ValueError(f"{path}: expected 4 numbers x0 y0 x1 y1, found {len(values)}")
    return tuple(float(v) for _, v in values)


def read_rafdb_list(list_file: Path, image_dir: Path, result: ReadResult,
                    manual_dir: Path | None = None, bbox_dir: Path | None = None) -> None:
    """``<name> <label 1..7>`` lines; split from the ``train_``/``test_`` prefix.

    Gender comes from the manual attribute files when given: "unsure" (2), absent files and files
    whose line 6 is not 0/1/2 become -1 and are listed in ``result.notes`` (compose.py removes such
    training rows).
    """
    for line in _label_text(list_file, "RAF-DB label list").splitlines():
        if not line.strip():
            continue
        result.rows_read += 1
        parts = line.split()
        name = parts[0]
        split = name.split("_")[0]
        if len(parts) != 2 or parts[1] not in RAFDB_LABELS or split not in ("train", "test"):
            result.skip("unknown_label", line.strip())
            continue
        stem = name.rsplit(".", 1)[0]
        gender = MISSING
        if manual_dir is not None:
            attr = manual_dir / f"{stem}_manu_attri.txt"
            g = read_rafdb_manual_gender(attr) if attr.is_file() else None
            if not attr.is_file():
                result.notes["gender_annotation_missing"].append(name)
            elif g is None:  # the file is there, its line 6 is not a gender code
                result.notes["gender_annotation_malformed"].append(f"{attr}: line 6 is not 0, 1 or 2")
            elif g == 2:
                result.notes["gender_unsure"].append(name)
            else:
                gender = g
        box = None
        if bbox_dir is not None and (bbox_dir / f"{stem}_boundingbox.txt").is_file():
            box = parse_rafdb_box(bbox_dir / f"{stem}_boundingbox.txt")
        result.records.append(Record("rafdb", image_dir / name, name, stem, split,
                                     gender=gender, emotion=int(parts[1]) - 1, box=box))


def read_rafdb(folder: Path) -> ReadResult:
    result = ReadResult("rafdb")
    basic = folder / "basic" if (folder / "basic").is_dir() else folder
    list_file = _first_existing(basic / "EmoLabel" / n for n in RAFDB_LIST_NAMES)
    if list_file is None:
        raise FileNotFoundError(f"RAF-DB label list not found: expected {basic}/EmoLabel/{RAFDB_LIST_NAMES[0]}")
    manual_dir = basic / "Annotation" / "manual"
    if not manual_dir.is_dir():
        # Without it every training image has an unknown gender and compose.py removes them all
        # (Table 3.2's 9,215 emotion samples all carry a gender): no emotion training data at all.
        raise FileNotFoundError(
            f"RAF-DB gender annotations not found: expected the folder {manual_dir} (manual.zip, "
            "*_manu_attri.txt); training images need their gender (Table 3.2, §3.7.2 multi-task training)")
    bbox_dir = basic / "Annotation" / "boundingbox"
    read_rafdb_list(list_file, basic / "Image" / "original", result,
                    manual_dir=manual_dir,
                    bbox_dir=bbox_dir if bbox_dir.is_dir() else None)
    return result


# ---------------------------------------------------------------- CelebA-HQ

def parse_celebamask_attributes(path: Path) -> dict[str, int]:
    """``CelebAMask-HQ-attribute-anno.txt`` -> {image name: gender id} from the ``Male`` column."""
    lines = _label_text(path, "CelebAMask-HQ attribute file").splitlines()
    if not lines or not lines[0].strip().isdigit():
        raise ValueError(f"{path} line 1: expected the number of images, got {lines[0] if lines else ''!r}")
    if len(lines) < 2 or "Male" not in lines[1].split():
        raise ValueError(f"{path} line 2: expected the attribute names, including Male")
    count, names = int(lines[0]), lines[1].split()
    male = names.index("Male")
    genders = {}
    for line_no, line in enumerate(lines[2:], start=3):
        parts = line.split()
        if len(parts) != len(names) + 1 or parts[male + 1] not in ("1", "-1"):
            raise ValueError(f"{path} line {line_no}: expected a name and {len(names)} values of 1/-1")
        genders[parts[0]] = 0 if parts[male + 1] == "1" else 1
    if len(genders) != count:
        raise ValueError(f"{path}: line 1 announces {count} images, found {len(genders)}")
    return genders


CELEBAHQ_SPLITS, CELEBAHQ_SEXES = ("train", "val"), ("male", "female")  # StarGAN v2's folders; gender id = index


def read_celebahq(folder: Path) -> ReadResult:
    """StarGAN v2 ``celeba_hq/{train,val}/{female,male}`` (28,000/2,000: the split Table 3.2 fits),
    else CelebAMask-HQ's 30,000 images with the attribute file (no official split: all train).

    The labels are the folder names, so images in any other folder are not read: such folders (``Female/``
    renamed, ``test/``) and the expected ones missing (a partial unzip) are listed in ``result.notes``."""
    result = ReadResult("celebahq")
    stargan = folder / "celeba_hq"
    if stargan.is_dir():
        layout = {stargan: CELEBAHQ_SPLITS} | {stargan / split: CELEBAHQ_SEXES for split in CELEBAHQ_SPLITS}
        for d, names in layout.items():
            for p in sorted(d.iterdir()) if d.is_dir() else ():
                if p.is_dir() and p.name not in names:
                    result.notes["folder_not_read"].append(p.relative_to(folder).as_posix())
        for split in CELEBAHQ_SPLITS:
            for gender, sex in enumerate(CELEBAHQ_SEXES):
                d = stargan / split / sex
                if not d.is_dir():
                    result.notes["folder_missing"].append(d.relative_to(folder).as_posix())
                    continue
                for p in sorted(d.iterdir()):
                    result.rows_read += 1
                    rel = f"{split}/{sex}/{p.name}"
                    result.records.append(Record("celebahq", p, rel, safe_key(rel.rsplit(".", 1)[0]),
                                                 split, gender=gender))
        return result
    mask = folder / "CelebAMask-HQ"
    if not (mask / "CelebAMask-HQ-attribute-anno.txt").is_file():
        raise FileNotFoundError(f"CelebA-HQ not found: expected {stargan}/{{train,val}}/{{male,female}}/ (StarGAN "
                                f"v2, the split Table 3.2 fits) or {mask}/CelebAMask-HQ-attribute-anno.txt")
    for name, gender in parse_celebamask_attributes(mask / "CelebAMask-HQ-attribute-anno.txt").items():
        result.rows_read += 1
        result.records.append(Record("celebahq", mask / "CelebA-HQ-img" / name, name,
                                     safe_key(name.rsplit(".", 1)[0]), "train", gender=gender))
    result.notes["no_official_split_layout"].append(str(mask))
    return result


# ---------------------------------------------------------------- VGGFace2 test + MIVIA ages

IDENTITY_META_HEADER = ["Class_ID", "Name", "Sample_Num", "Flag", "Gender"]
# Every column but the free-text Name, as the release writes it, and how an error names it: a row breaking one
# is refused, since a shifted or merged row would otherwise give an identity another's gender or drop it.
IDENTITY_META_FORMS = {"Class_ID": (r"n\d{6}", "nXXXXXX (n and 6 digits)"), "Sample_Num": (r"\d+", "an image count"),
                       "Flag": (r"[01]", "0 (test) or 1 (train)"), "Gender": (r"[mf]", "m/f")}


def parse_identity_meta(path: Path) -> dict[str, tuple[int, int]]:
    """``identity_meta.csv`` -> {class id: (gender id, flag)}; CRLF, spaces after commas, quoted names.

    One identity per line: a quote left open (which would swallow the identities of the lines after it),
    another number of fields or a column not of its form stops with the line and what was expected."""
    out = {}
    one_per_line = f"expected one identity per line: {', '.join(IDENTITY_META_HEADER)}"
    with io.StringIO(_label_text(path, "VGGFace2 identity_meta.csv"), newline="") as f:
        rows = _csv_rows(f, path, one_per_line, skipinitialspace=True)
        first = next(rows, (1, None))[1]  # None: an empty file has no line 1 at all
        header = [h.strip() for h in first or []]
        if header != IDENTITY_META_HEADER:
            got = "the file is empty" if first is None else f"got {header}"
            raise ValueError(f"{path} line 1: expected the header {', '.join(IDENTITY_META_HEADER)}, {got}")
        for line_no, row in rows:
            if len(row) != len(IDENTITY_META_HEADER):
                raise ValueError(f"{path} line {line_no}: {len(row)} fields, {one_per_line}; got {row}")
            fields = dict(zip(IDENTITY_META_HEADER, (v.strip() for v in row)))
            for column, (form, what) in IDENTITY_META_FORMS.items():
                if not re.fullmatch(form, fields[column]):
                    raise ValueError(f"{path} line {line_no}: expected {column} {what}, got {row}")
            out[fields["Class_ID"]] = ({"m": 0, "f": 1}[fields["Gender"]], int(fields["Flag"]))
    return out


VGGFACE2_IMAGE = r"n\d{6}/\d{4}_\d{2}\.jpg"  # a test_list.txt path: nXXXXXX/XXXX_XX.jpg


def parse_mivia_ages(path: Path) -> dict[str, float]:
    """MIVIA ``*.age_detected.csv``: image path in column 0, age (float years, 0 or more) in the last column.

    Line 1 may be a header: a row whose age is not one is taken as such only there, and only if its column 0 is
    no test_list path (a header would have taken the first image's bad age silently)."""
    ages = {}
    expected = "expected one image per line: its test_list path first, its age in years last"
    with io.StringIO(_label_text(path, "MIVIA age file"), newline="") as f:
        for line_no, row in _csv_rows(f, path, expected, skipinitialspace=True, quotechar="|"):
            if not row:
                continue
            try:
                age = float(row[-1])
            except ValueError:
                age = math.nan
            if math.isfinite(age) and age >= 0:  # "nan"/"inf" parse but cannot be binned, nor can a negative age
                ages[row[0].strip()] = age
            elif line_no > 1 or re.fullmatch(VGGFACE2_IMAGE, row[0].strip()):
                raise ValueError(f"{path} line {line_no}: last column is not an age (years, 0 or more): {row}")
    return ages


def parse_loose_boxes(path: Path) -> dict[str, Box]:
    """``loose_bb_test.csv``: NAME_ID,X,Y,W,H (xywh) -> {NAME_ID.jpg: xyxy}."""
    boxes = {}
    with io.StringIO(_label_text(path, "VGGFace2 loose_bb_test.csv"), newline="") as f:
        _, rows = _csv_with_columns(f, path, ("NAME_ID", "X", "Y", "W", "H"), "face box")
        for line_no, row in rows:
            try:
                x, y, w, h = (float(row[c]) for c in ("X", "Y", "W", "H"))
            except (ValueError, TypeError):  # TypeError: a short row leaves the last columns None
                raise ValueError(f"{path} line {line_no}: expected NAME_ID and four numbers X,Y,W,H, "
                                 f"got {list(row.values())}") from None
            boxes[row["NAME_ID"] + ".jpg"] = (x, y, x + w, y + h)
    return boxes


VGGFACE2_AGE_FILES = ("test.age_detected.csv", "annotations/test.age_detected.csv")


def read_vggface2_list(test_list: Path, identities: dict[str, tuple[int, int]], image_dir: Path,
                       result: ReadResult, age_file: Path | None = None,
                       boxes: dict[str, Box] | None = None) -> None:
    """Every test image inherits its identity's gender; age from the MIVIA file ``age_file`` when given."""
    names = _label_text(test_list, "VGGFace2 test_list.txt").split()
    ages = parse_mivia_ages(age_file) if age_file else None
    if ages is not None and names and not any(name in ages for name in names):
        # Otherwise every image only gets an age_missing note and the age test set is silently empty.
        example = next(iter(ages), None)
        raise ValueError(f"{age_file}: 0 of its {len(ages)} keys match the {len(names)} images "
                         f"of {test_list} (age file key e.g. {example!r}, test_list.txt e.g. {names[0]!r}); "
                         "expected column 0 to be the test_list path nXXXXXX/XXXX_XX.jpg and the last column "
                         "the age in years, as in MIVIA's test.age_detected.csv")
    for name in names:
        result.rows_read += 1
        identity = identities.get(name.split("/")[0])
        if identity is None:
            result.skip("unknown_identity", name)
            continue
        age = MISSING
        if ages is not None:
            if name in ages:
                # MIVIA ages are real-valued estimates; binning floors them like whole years.
                age = age_to_group(ages[name])
            else:
                result.notes["age_missing"].append(name)
        result.records.append(Record("vggface2", image_dir / name, name, safe_key(name[:-4]), "test",
                                     age=age, gender=identity[0],
                                     box=None if boxes is None else boxes.get(name)))


def read_vggface2(folder: Path) -> ReadResult:
    result = ReadResult("vggface2")
    age_file = _first_existing(folder / n for n in VGGFACE2_AGE_FILES)
    if age_file is None:
        result.notes["mivia_age_file_absent"].append(f"{folder}/{VGGFACE2_AGE_FILES[0]}")
    box_file = folder / "bb_landmark" / "loose_bb_test.csv"
    read_vggface2_list(folder / "test_list.txt", parse_identity_meta(folder / "identity_meta.csv"),
                       folder / "test", result, age_file=age_file,
                       boxes=parse_loose_boxes(box_file) if box_file.is_file() else None)
    return result


# Dataset id (= folder name under the raw root) -> reader.
READERS: dict[str, Callable[[Path], ReadResult]] = {
    "lagenda": read_lagenda,
    "fairface": read_fairface,
    "rafdb": read_rafdb,
    "celebahq": read_celebahq,
    "utkface": read_utkface,
    "vggface2": read_vggface2,
}
