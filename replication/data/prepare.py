"""``prepare``: raw datasets -> face crops + ``manifest.csv`` + ``report.json`` (thesis §2.7, §3.1).

    python3 -m replication prepare --data-root RAW --out PREPARED [--detector ssd|boxes|none]
        [--detector-dir DIR] [--aligned utkface,celebahq] [--size 336] [--workers N] [--seed 0]

How the face of each dataset is found (``crop_mode``); §2.7 crops "using a DNN
(res10_300x300_ssd_iter_140000_fp1) ... or using the already provided bounding boxes by the
authors if present":
* LAGENDA always uses its provided face boxes (a person without one is skipped by its reader).
* ``--detector ssd`` (default, the thesis): RAF-DB / VGGFace2 records with a shipped box are
  cropped from it, records without one go through the res10 SSD (``box_else_ssd``, listed
  under the note ``no_shipped_box_ssd_used``); the other datasets ship no boxes and all go
  through the SSD.
* ``--detector boxes`` (no SSD; the demo): RAF-DB / VGGFace2 use their shipped boxes (a record
  without one is skipped as ``no_box``); datasets that ship no boxes (FairFace, UTKFace,
  CelebA-HQ, all distributed as face chips) use the whole image.
* ``--detector none`` or ``--aligned DATASETS``: whole image (for aligned face chips).
When the SSD finds no face, FairFace keeps the image with the whole image as a fallback crop
(Table 3.2 counts all 86,744 FairFace images); other datasets skip it as ``no_face``.

Every label row ends up either in the manifest or under a skip reason in report.json
(checked before writing). Crops are written once; a journal makes re-runs resume. It records each
crop's source image and box, and a crop whose record now has another source or box (e.g. a LAGENDA
CSV edited between runs: its keys hold line numbers) is redone, not reused. One run at a time writes an
output folder (a lock, as `train`'s on a run folder): a second one is refused.
"""
from __future__ import annotations

import argparse
import io
import json
import multiprocessing as mp
import signal
import sys
from collections import Counter, defaultdict
from pathlib import Path

import cv2
import pandas as pd
from tqdm import tqdm  # text bars: tqdm.auto warns in a notebook kernel without ipywidgets (not a dependency)

from replication.arguments import HelpFormatter, number, reported
from replication.files import NotTextError, atomic_write_text, check_writable, exclusive_lock, read_text
from replication.labels import DATASETS, NUM_CLASSES, TASKS

from .compose import TEST_SOURCES, compose, training_totals
from .faces import ImageError, SSDFaceDetector, load_rgb, locate_ssd_files, resize, save_jpeg, square_crop
from .readers import READERS, Record, box_has_area
from .stats import class_counts, records_frame

BOXED = ("lagenda", "rafdb", "vggface2")  # datasets that can ship face boxes
NO_FACE_FALLBACK = ("fairface",)  # keep the whole image when the SSD finds no face
MANIFEST_COLUMNS = ["path", "dataset", "split", "age", "gender", "emotion"]
MAX_LISTED = 1000  # names listed per reason in report.json (counts are always complete)
# Settings that change the crops; a resumed run must use the same ones. "crop" is every
# dataset's crop_mode, so a folder cropped under another box policy is not silently reused.
CROP_SETTINGS = ("detector", "aligned", "crop", "size", "margin", "threshold")


def crop_mode(dataset: str, detector: str, aligned: tuple[str, ...] = ()) -> str:
    """``boxes`` | ``box_else_ssd`` | ``ssd`` | ``none`` (module docstring)."""
    if dataset == "lagenda":
        return "boxes"
    if detector == "none" or dataset in aligned:
        return "none"
    if dataset in BOXED:
        return "boxes" if detector == "boxes" else "box_else_ssd"
    return "none" if detector == "boxes" else "ssd"


# What --aligned may name: the datasets crop_mode takes whole when asked (not LAGENDA, several people per photo)
ALIGNABLE = tuple(d for d in DATASETS if crop_mode(d, "ssd", (d,)) == "none")


# ---------------------------------------------------------------- one image (runs in workers)

_WORKER: dict = {}


def _init_worker(settings: dict, ssd=None) -> None:
    _WORKER.clear()
    _WORKER.update(settings, ssd=ssd)


def _init_pool_worker(settings: dict) -> None:
    # Ctrl-C reaches every process of the terminal's group: the main process alone reports it and stops the
    # pool, instead of each worker printing its own KeyboardInterrupt traceback
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _init_worker(settings)


def _crop_one(task: tuple[Record, str, str]) -> tuple[str, str | None, list[str]]:
    """-> (key, skip reason or None, notes). Writes the crop on success."""
    record, mode, out_path = task
    try:
        rgb, notes = load_rgb(record.image)
    except ImageError as e:
        return record.key, e.reason, []
    try:
        return _crop_decoded(record, rgb, notes, mode, Path(out_path))
    except (cv2.error, ValueError, MemoryError):  # e.g. a huge or odd image: count it, keep going
        return record.key, "crop_failed", notes


def _crop_decoded(record: Record, rgb, notes: list[str], mode: str, out_path: Path):
    s = _WORKER
    h, w = rgb.shape[:2]
    box = record.box
    if mode == "none":
        crop = resize(rgb, s["size"])
    elif box is not None:  # §2.7: "the already provided bounding boxes by the authors if present"
        if not box_has_area(box):  # skipped like LAGENDA's rows without a face box (readers.read_lagenda)
            return record.key, "no_face_box", notes
        if box[2] <= 0 or box[3] <= 0 or box[0] >= w or box[1] >= h:
            return record.key, "box_outside_image", notes
        crop = square_crop(rgb, box, s["size"], s["margin"])
    elif mode == "boxes":
        return record.key, "no_box", notes
    else:  # ssd, or box_else_ssd for a record its dataset ships no box for
        if mode == "box_else_ssd":
            notes.append("no_shipped_box_ssd_used")
        if s["ssd"] is None:
            s["ssd"] = SSDFaceDetector.from_dir(s["detector_dir"], s["threshold"])
        found = s["ssd"].detect(rgb)
        if found is not None:
            crop = square_crop(rgb, found[0], s["size"], s["margin"])
        elif record.dataset in NO_FACE_FALLBACK:
            notes.append("no_face_fallback")
            crop = resize(rgb, s["size"])
        else:
            return record.key, "no_face", notes
    save_jpeg(crop, out_path)
    return record.key, None, notes


# ---------------------------------------------------------------- the whole run

def _listing(names: list[str]) -> dict:
    return {"count": len(names), "files": names[:MAX_LISTED]}


class PreparedFolderError(ValueError):
    """A state file of the prepared folder (prepare_settings.json, journal.jsonl) is not what prepare writes, or
    another prepare is writing the folder; the message names the file and the way out."""


def read_prepare_settings(prepared: str | Path) -> dict | None:
    """The crop settings (CROP_SETTINGS: detector, size, margin, ...) a prepared folder's crops were made with;
    None for a folder without prepare_settings.json (crops made elsewhere). A damaged one (emptied by a full disk,
    edited) is a PreparedFolderError: the crops' settings are unknown, and prepare must not guess them."""
    path = Path(prepared) / "prepare_settings.json"
    if not path.is_file():
        return None
    data = path.read_bytes()
    try:
        settings = json.loads(data)
    except ValueError as err:  # JSONDecodeError, or UnicodeDecodeError for bytes that are no text
        settings, got = None, "the file is empty" if not data.strip() else f"not JSON ({err})"
    else:
        got = f"a JSON {type(settings).__name__}"
    if not isinstance(settings, dict):
        raise PreparedFolderError(
            f"{path}: {got}; expected the JSON object of crop settings that prepare writes. Delete it and run prepare "
            f"with the settings its crops were made with (report.json's options), or prepare into another --out")
    return settings


def _changed_settings(old: dict, new: dict) -> list[str]:
    """``setting old → new`` for each crop setting that differs; per dataset within ``crop``."""
    changed = []
    for k in CROP_SETTINGS:
        a, b = old.get(k), new[k]
        if isinstance(a, dict):  # crop: only the datasets whose crop mode changed, not two whole dicts
            changed += [f"{k}[{d}] {a.get(d)!r} → {b[d]!r}" for d in b if a.get(d) != b[d]]
        elif a != b:
            changed.append(f"{k} {repr(a) if k in old else '(not recorded)'} → {b!r}")
    return changed


def _check_settings(out: Path, settings: dict) -> None:
    """Crops already in ``out`` are reused only if they were made with the same settings."""
    wanted = {k: settings[k] for k in CROP_SETTINGS}
    old = read_prepare_settings(out)
    changed = None if old is None else _changed_settings(old, wanted)
    if changed == []:  # the same settings: the crops in it are reused
        return
    if changed and any(p.is_file() for p in (out / "crops").rglob("*")):
        raise ValueError(f"{out} holds crops made with other settings: {', '.join(changed)}. Rerun with the old "
                         "settings to resume, or use another --out folder (or delete it) to change crop settings.")
    # A new folder, or one without crops yet (a first run stopped on a bad input): nothing to keep consistent with.
    atomic_write_text(out / "prepare_settings.json", json.dumps(wanted, indent=1))


def run_prepare(data_root: str | Path, out: str | Path, *, detector: str = "ssd", detector_dir=None,
                size: int = 336, workers: int = 1, seed: int = 0, aligned: tuple[str, ...] = (),
                margin: float = 0.2, threshold: float = 0.5, datasets: tuple[str, ...] = DATASETS,
                ssd: SSDFaceDetector | None = None, progress: bool = True) -> dict:
    """Run the pipeline; returns the report (also written to ``out/report.json``).

    ``ssd`` injects a ready detector (tests use a stub net); it forces in-process work.
    """
    root, out = Path(data_root), Path(out)
    if not root.is_dir():  # say so, rather than send the user looking for dataset folders inside it
        problem = "is not a folder" if root.exists() else "does not exist"
        raise FileNotFoundError(f"data root {root} {problem}: expected a folder holding some of "
                                f"{', '.join(datasets)} (see the README for the layout of each)")
    present = [d for d in datasets if (root / d).is_dir()]
    if not present:
        raise FileNotFoundError(f"no dataset folder in {root}: expected some of {', '.join(datasets)} "
                                "(see the README for the layout of each)")
    check_writable(out, "folder")
    crop = {d: crop_mode(d, detector, tuple(aligned)) for d in DATASETS}
    modes = {d: crop[d] for d in present}
    if ssd is None and {"ssd", "box_else_ssd"} & set(modes.values()):
        locate_ssd_files(detector_dir)  # fail before any work, with download instructions
    settings = dict(detector=detector, aligned=sorted(aligned), crop=crop, size=size, margin=margin,
                    threshold=threshold, detector_dir=None if detector_dir is None else str(detector_dir))
    lock = out / ".prepare.lock"
    # two runs on one folder would each redo every crop, and append each crop to the journal twice
    with exclusive_lock(lock, PreparedFolderError(
            f"another prepare is writing {out} now ({lock} is locked); once it has finished, the same command "
            f"reuses its crops; or prepare into another --out")):
        return _prepare_locked(root, out, modes, settings, seed=seed, workers=workers, datasets=datasets, ssd=ssd,
                               progress=progress)


def _prepare_locked(root: Path, out: Path, modes: dict[str, str], settings: dict, *, seed: int, workers: int,
                    datasets: tuple[str, ...], ssd, progress: bool) -> dict:
    """run_prepare's work once it holds ``out``'s lock; ``modes``: the crop mode of each dataset present."""
    _check_settings(out, settings)
    reads = {d: READERS[d](root / d) for d in modes}
    journal_path = out / "journal.jsonl"
    done = _read_journal(journal_path)

    # record -> [skip reason or None, notes, reused]; keys are unique per dataset after this loop
    outcome: dict[tuple[str, str], list] = {}
    tasks = []
    for d, result in reads.items():
        unique = {}
        for r in result.records:
            if r.key in unique:  # two names that map to the same crop file
                result.skip("duplicate_key", r.name)
            else:
                unique[r.key] = r
        result.records = list(unique.values())
        for r in result.records:
            rel = crop_rel(r)
            # A LAGENDA key holds the CSV line number: after the CSV changed, the same path may name
            # another person, so a crop is reused only if made from the same image and box.
            entry = done.get(rel)
            if (entry is not None and all(entry.get(k) == v for k, v in _origin(r, root).items())
                    and (out / rel).is_file()):
                outcome[(d, r.key)] = [None, entry["notes"], True]
            else:
                tasks.append((r, modes[d], str(out / rel)))

    _init_worker(settings, ssd)
    bar = tqdm(total=len(tasks), desc="prepare", unit="img", mininterval=1.0, disable=not progress)
    pool = mp.get_context().Pool(workers, _init_pool_worker, (settings,)) if workers > 1 and ssd is None else None
    try:
        results = pool.imap(_crop_one, tasks, chunksize=32) if pool else map(_crop_one, tasks)
        with open(journal_path, "a") as journal:
            for (r, _, _), (key, reason, notes) in zip(tasks, results):
                outcome[(r.dataset, key)] = [reason, notes, False]
                if reason is None:
                    journal.write(json.dumps({"path": crop_rel(r), **_origin(r, root), "notes": notes}) + "\n")
                    journal.flush()
                bar.update()
    finally:
        bar.close()
        if pool:  # every result is in unless interrupted, and then the crops still queued are dropped
            pool.terminate()
            pool.join()

    written = [r for res in reads.values() for r in res.records if outcome[(r.dataset, r.key)][0] is None]
    composition = compose(written, seed)
    manifest = pd.DataFrame([(crop_rel(r), r.dataset, split, r.age, r.gender, r.emotion)
                             for r, split in composition.rows], columns=MANIFEST_COLUMNS)
    manifest = manifest.sort_values(["dataset", "split", "path"], kind="stable")
    atomic_write_text(out / "manifest.csv", manifest.to_csv(index=False))

    report = {"options": {**settings, "seed": seed, "workers": workers, "data_root": str(root)},
              "absent_datasets": [d for d in datasets if d not in modes],
              "manifest_rows": len(manifest),
              "training_totals": training_totals(composition.rows),
              "datasets": {d: _dataset_report(res, modes[d], outcome, composition, manifest)
                           for d, res in reads.items()}}
    atomic_write_text(out / "report.json", json.dumps(report, indent=1))
    return report


def _read_journal(path: Path) -> dict[str, dict]:
    """Crop path -> journal entry (source, box, notes) of every crop an earlier run finished; empty without a
    journal. A line cut short by an interrupted run is skipped (its crop is made again); any other line that is not
    an entry prepare writes is a PreparedFolderError naming it."""
    done = {}
    if not path.is_file():
        return done
    for line_no, line in enumerate(read_text(path, "the journal prepare writes").splitlines(), start=1):
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:  # a line cut by an interrupted run: redo that crop
            continue
        if not (isinstance(entry, dict) and isinstance(entry.get("path"), str)
                and isinstance(entry.get("notes"), list)):
            raise PreparedFolderError(
                f"{path} line {line_no}: expected a crop's JSON object with its path, source, box and "
                f"notes, as prepare writes, got {line[:60]!r}; delete that line or the file: the crops they stood "
                "for are made again")
        done[entry["path"]] = entry
    return done


def crop_rel(r: Record) -> str:
    """Crop location relative to the prepared folder (the manifest's ``path``)."""
    return f"crops/{r.dataset}/{r.key}.jpg"


def _origin(r: Record, root: Path) -> dict:
    """What a crop was made from, as the journal records it (source relative to the data root, so a
    moved raw folder still resumes; box as a JSON list, None without one)."""
    source = r.image.relative_to(root) if r.image.is_relative_to(root) else r.image
    return {"source": source.as_posix(), "box": None if r.box is None else list(r.box)}


def _dataset_report(result, mode: str, outcome: dict, composition, manifest: pd.DataFrame) -> dict:
    d = result.dataset
    skipped = defaultdict(list, {k: list(v) for k, v in result.skipped.items()})
    notes = defaultdict(list, {k: list(v) for k, v in result.notes.items()})
    states = Counter()
    for r in result.records:
        reason, rec_notes, reused = outcome[(d, r.key)]
        if reason is not None:
            skipped[reason].append(r.name)
        states["reused" if reused else "written"] += reason is None
        for note in rec_notes:
            notes[note].append(r.name)
    for reason, names in composition.removed.get(d, {}).items():
        skipped[reason] += names
    counts = manifest[manifest.dataset == d].split.value_counts()
    in_manifest = {s: int(counts.get(s, 0)) for s in ("train", "val", "test")}
    # Fig. 2.13b draws CelebA-HQ's official val folder, which Table 3.1 leaves out of the manifest
    unused = class_counts(records_frame(r for r in composition.unused if r.dataset == d))
    n_skipped = sum(len(v) for v in skipped.values())
    if result.rows_read != sum(in_manifest.values()) + n_skipped:  # the "never silently drop" rule
        raise AssertionError(f"{d}: {result.rows_read} rows read but {sum(in_manifest.values())} "
                             f"in the manifest + {n_skipped} skipped")
    return {
        "crop": mode, "rows_read": result.rows_read, "records": len(result.records),
        "written": states["written"], "reused": states["reused"],
        "skipped": {k: _listing(v) for k, v in sorted(skipped.items()) if v},
        "notes": {k: _listing(v) for k, v in sorted(notes.items()) if v},
        "faces_not_found": len(skipped.get("no_face", [])) + len(notes.get("no_face_fallback", [])),
        "fallback_used": len(notes.get("no_face_fallback", [])),
        "manifest": in_manifest,
        "not_used_class_counts": unused.drop(columns="dataset").to_dict("records"),
    }


# ---------------------------------------------------------------- reading the result back

def read_report(prepared: str | Path) -> dict:
    """``report.json`` of a prepared folder: per dataset, rows read, skips by reason, class counts of
    the records Table 3.1 does not use."""
    path = Path(prepared) / "report.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: `python3 -m replication prepare --out {prepared}` writes it")
    return json.loads(path.read_text())


class ManifestError(ValueError):
    """A value of manifest.csv is not what prepare writes; the message names the row and what was expected."""


def read_manifest(path: str | Path) -> pd.DataFrame:
    """Load ``manifest.csv`` and validate every value; errors name the row and what was expected."""
    path = Path(path)
    try:
        text = read_text(path, "the manifest.csv that prepare writes")
        df = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    except NotTextError as err:  # pandas < 3 raised a bare UnicodeDecodeError here, naming no file
        raise ManifestError(str(err)) from None
    except pd.errors.EmptyDataError:
        raise ManifestError(f"{path}: empty file, expected a CSV with the header {','.join(MANIFEST_COLUMNS)}"
                            ) from None
    except pd.errors.ParserError as err:  # pandas names the line and what it found there
        raise ManifestError(f"{path}: not a CSV pandas can read: {err}".rstrip()) from None
    if list(df.columns) != MANIFEST_COLUMNS:
        raise ManifestError(f"{path}: columns {list(df.columns)}, expected {MANIFEST_COLUMNS}")
    allowed = {"dataset": set(DATASETS), "split": {"train", "val", "test"}}
    for i, row in enumerate(df.itertuples(index=False)):
        where = f"{path} row {i + 1} (line {i + 2})"
        if not row.path:
            raise ManifestError(f"{where}: empty path")
        for col, values in allowed.items():
            if getattr(row, col) not in values:
                raise ManifestError(f"{where}: {col}={getattr(row, col)!r}, expected one of {sorted(values)}")
        for task in TASKS:
            value = getattr(row, task)
            if not value.lstrip("-").isdigit() or not -1 <= int(value) < NUM_CLASSES[task]:
                raise ManifestError(f"{where}: {task}={value!r}, expected an integer in -1..{NUM_CLASSES[task] - 1}")
    return df.astype({task: "int64" for task in TASKS})


def cli(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m replication prepare", description=__doc__.split("\n\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("--data-root", required=True, help="raw data root with one folder per dataset")
    p.add_argument("--out", required=True, help="output folder (crops/, manifest.csv, report.json)")
    p.add_argument("--detector", choices=("ssd", "boxes", "none"), default="ssd",
                   help="ssd: the thesis's res10 SSD where no box is shipped; boxes: no SSD, the shipped boxes of the "
                        "datasets that have them and whole images of the others (the demo); none: whole images, but "
                        "LAGENDA's (several people each) are always cropped from its boxes")
    p.add_argument("--detector-dir", help="folder with deploy.prototxt + res10 caffemodel (needed by --detector ssd)")
    p.add_argument("--aligned", default="", help="comma-separated datasets whose images are face chips, used whole "
                                                 "(e.g. utkface for its aligned UTKFace/ chips; default: none)")
    p.add_argument("--datasets", default=",".join(DATASETS), help="comma-separated subset to prepare")
    p.add_argument("--size", type=number(int, 2), default=336, help="crop side in pixels (model resolution)")
    p.add_argument("--margin", type=number(float, 0), default=0.2, help="box margin per side, fraction of the box")
    p.add_argument("--threshold", type=number(float, 0, 1, above=True), default=0.5, help="minimum SSD confidence")
    p.add_argument("--workers", type=number(int, 1), default=1, help="processes cropping in parallel")
    p.add_argument("--seed", type=number(int, 0), default=0, help="seed of the 80/20 train/val splits")
    a = p.parse_args(argv)
    split = lambda s: tuple(x for x in s.split(",") if x)  # noqa: E731
    unknown = set(split(a.aligned) + split(a.datasets)) - set(DATASETS)
    if unknown:
        p.error(f"unknown dataset(s) {sorted(unknown)}; known: {', '.join(DATASETS)}")
    if not split(a.datasets):
        p.error(f"argument --datasets: expected one or more of {', '.join(DATASETS)}, got {a.datasets!r}")
    not_alignable = [d for d in split(a.aligned) if d not in ALIGNABLE]
    if not_alignable:  # it would only change the recorded settings, and so refuse the crops already made
        p.error(f"argument --aligned: {', '.join(not_alignable)} is always cropped from its face boxes; --aligned "
                f"takes {', '.join(ALIGNABLE)}")
    # the journal keeps every crop written, so an interrupted run loses none of them
    return reported("prepare", lambda: _prepare(a, split(a.aligned), split(a.datasets)), (OSError, ValueError),
                    resume=f"resumes: the crops already in {a.out} are reused")


def _prepare(a: argparse.Namespace, aligned: tuple[str, ...], datasets: tuple[str, ...]) -> int:
    """The run ``cli`` asked for, and its summary on the console."""
    report = run_prepare(a.data_root, a.out, detector=a.detector, detector_dir=a.detector_dir, size=a.size,
                         workers=a.workers, seed=a.seed, aligned=aligned, margin=a.margin,
                         threshold=a.threshold, datasets=datasets)
    for d, r in report["datasets"].items():
        skips = ", ".join(f"{k} {v['count']}" for k, v in r["skipped"].items()) or "none"
        print(f"{d:9s} read {r['rows_read']:7d}  manifest {r['manifest']}  skipped: {skips}")
        for warning in _warnings(d, r):
            print(f"warning: {warning}")
    if report["absent_datasets"]:  # prepared without them (a subset is allowed), but never silently
        print(f"absent (no folder in {a.data_root}): {', '.join(report['absent_datasets'])}")
    print(f"wrote {Path(a.out) / 'manifest.csv'} ({report['manifest_rows']} rows) and report.json")
    return 0


def _warnings(d: str, r: dict) -> list[str]:
    """What dataset ``d``'s report ``r`` holds that does not stop the run but leaves the dataset or a test set of it
    empty, or images unread: said on the console, not only in report.json."""
    out, notes = [], r["notes"]
    test_split = dict(TEST_SOURCES).get(d)  # the official split Table 3.1 tests on, if any
    if r["rows_read"] == 0:
        out.append(f"{d} read 0 rows (empty label list or image folders?): it adds nothing to the manifest")
    elif sum(r["manifest"].values()) == 0:
        out.append(f"{d} skipped all of its {r['rows_read']} rows: it adds nothing to the manifest")
    elif test_split is not None and r["manifest"]["test"] == 0:
        out.append(f"{d} has no test rows: its official {test_split} split, Table 3.1's test set, gave none")
    if "folder_missing" in notes:
        out.append(f"{d} lacks the folder(s) {', '.join(notes['folder_missing']['files'])} of its layout (see the "
                   "README): it is prepared without them")
    if "folder_not_read" in notes:
        out.append(f"{d} has folders outside its layout (see the README), whose images are not read: "
                   f"{', '.join(notes['folder_not_read']['files'])}")
    if "mivia_age_file_absent" in notes:
        out.append(f"{d} has no MIVIA age file (expected {notes['mivia_age_file_absent']['files'][0]}): its images "
                   "have no age, so its age test set is empty")
    return out


if __name__ == "__main__":
    sys.exit(cli())
