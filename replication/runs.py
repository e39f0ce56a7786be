"""Run folders and the `train` command: one resumable run folder per (method, tasks, weighting, seed).

Run folder ``<runs_dir>/<name>/``: config.json, metrics.jsonl (one record per epoch), best.pt (the
selected trainable state), last.pt (everything needed to resume), predictions.csv, results.json, DONE.
Every file is written atomically (tmp + os.replace); an epoch end writes metrics.jsonl, last.pt, then
best.pt (from best-next-epochN.pt once last.pt records epoch N). last.pt is saved at every epoch end and
every ``checkpoint_every`` steps with the RNG states and the sampler position, so a run killed at any point
(kill -9 included) resumes bit-identically when the same command is run again; a run with DONE is not
retrained. The training itself is engine.py's.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import inspect
import json
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path

import pandas as pd
from torch import nn

from replication import distributed
from replication.arguments import HelpFormatter, checkpoint_blocks_problem, prepared_file_error, reported
from replication.checkpoint import PE_CORE_WEIGHTS, CheckpointError, load_clip
from replication.data import ManifestError, PreparedFolderError, read_prepare_settings
from replication.engine import (INPUT_FIELDS, RUN_METHODS, BatchSizeError, FaceDataset, RunStateError, Trainer,
                                TrainConfig, build_model, evaluation_frame, model_image_size, predict_logits,
                                predictions_table, read_run_state)
from replication.files import atomic_write, atomic_write_text, check_writable, exclusive_lock, sha1
from replication.labels import TASKS
from replication.metrics import summarize_predictions
from replication.profiles import PROFILES, RUN_FIELDS, demo_inputs_help, get_profile
from replication.tokenizer import CLIP_MERGES, MergesError
from replication.transforms import eval_transform
from replication.zero_shot import ZeroShotClassifier


# fields that change how a run executes but not what it computes: a resumed run may differ in them
# (activation checkpointing replays the blocks with the same dropout masks: same numbers, less memory;
# grad_checkpointing is its on/off flag in run folders written before checkpoint_blocks replaced it)
_EXECUTION_ONLY = {"num_workers", "checkpoint_every", "runs_dir", "device", "checkpoint_blocks", "grad_checkpointing"}
# fields the zero-shot baseline (§4.2) never reads: it trains nothing, and its test predictions do not depend on
# how many images go through at once. Its folder name leaves them out, so every batch shares the one baseline
# (a `reproduce --max-train-samples N` batch beside a finished one included).
_ZERO_SHOT_IGNORES = {"weighting", "seed", "max_train_samples", "batch_size", "max_epochs", "patience", "lr_head",
                      "lr_backbone", "weight_decay", "emotion_share", "cache_embeddings"}


# a run's input files: what each is called in an error, where the full profile gets it from, and what file it is
_INPUTS = {"manifest_sha1": ("prepared manifest", "make it with `python3 -m replication prepare --data-root RAW --out "
                             "PREPARED --detector ssd --detector-dir DETECTOR`: README, 'Full replication', step 2",
                             "a CSV file"),
           "checkpoint_sha1": ("checkpoint", f"PE-Core weights: {PE_CORE_WEIGHTS}",
                               "a checkpoint file (.pt, .bin or .safetensors)"),
           "bpe_sha1": ("BPE merges file", CLIP_MERGES, "a .txt or .txt.gz file")}


def _config_dict(cfg: TrainConfig) -> dict:
    """config.json: the settings, and the SHA-1 of the files a run's numbers depend on beyond them (the
    manifest's labels and splits, the encoder's weights, the merges). A path can stay while its contents
    change (data/demo generated again, a checkpoint replaced): a finished run is then refused, never reused."""
    paths = {"manifest_sha1": Path(cfg.prepared) / "manifest.csv", "checkpoint_sha1": cfg.checkpoint,
             "bpe_sha1": cfg.bpe if cfg.method == "zero_shot" else None}  # only §4.2's prompts are tokenized
    paths = {key: Path(path) for key, path in paths.items() if path is not None}
    missing = [key for key, path in paths.items() if not path.is_file()]
    if missing:
        raise MissingInputError(_missing_inputs(cfg, {key: paths[key] for key in missing}))
    return {**json.loads(json.dumps(dataclasses.asdict(cfg))),  # tuples -> lists, as read back
            **{key: _sha1(path) for key, path in paths.items()}}


class MissingInputError(FileNotFoundError):
    """A run's manifest, checkpoint or merges file is not there (or is a folder); the message says how to get each."""


def _missing_inputs(cfg: TrainConfig, missing: dict[str, Path]) -> str:
    """One line per missing input, then how to get it: the demo makes all of its own (pretrain writes its
    encoder: Hugging Face's weights are the full profile's), the full profile's come from the README's table.
    An input given as a folder is said to be one: the file in it was meant, and making the inputs would not help;
    so is a --prepared given as a file, alone (the help would make the crops in it)."""
    if "manifest_sha1" in missing and Path(cfg.prepared).is_file():
        return prepared_file_error(Path(cfg.prepared))
    lines = [f"{_INPUTS[key][0]} {path} is a folder; expected {_INPUTS[key][2]}"
             for key, path in missing.items() if path.is_dir()]
    missing = {key: path for key, path in missing.items() if not path.is_dir()}
    if not missing:
        return "\n".join(lines)
    if cfg.profile == "demo":
        return "\n".join(lines + [f"{_INPUTS[key][0]} not found: {path}" for key, path in missing.items()]
                         + [demo_inputs_help(cfg.prepared, cfg.checkpoint, cfg.bpe)])
    return "\n".join(lines + [f"{_INPUTS[key][0]} not found: {path} ({_INPUTS[key][1]})"
                              for key, path in missing.items()])


def _sha1(path: Path) -> str:
    stat = path.stat()
    return _sha1_of_version(str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=None)
def _sha1_of_version(path: str, size: int, mtime_ns: int) -> str:
    """Hashed once per file version: a notebook checks many runs against the same 2.7 GB checkpoint."""
    return sha1(Path(path))


def crop_size_note(cfg: TrainConfig) -> str | None:
    """A note when `prepare` cut the crops at another size than the model takes (prepare_settings.json): the
    transforms resize them, so a run works either way, but crops prepared for another model (--size 224 for
    the 336-px PE-Core-L14-336) would lose detail without a word."""
    size = (read_prepare_settings(cfg.prepared) or {}).get("size")
    wanted = model_image_size(cfg.model_config)
    if size is None or size == wanted:
        return None
    return (f"the crops in {cfg.prepared} are {size} px, {cfg.model_config} takes {wanted} px: every crop is resized "
            f"(`prepare --size {wanted}` makes crops of the model's size)")


# --- runs ---------------------------------------------------------------------------------------------
class RunFolderError(ValueError):
    """The run's folder holds a run with other settings, or another process is writing it; the message says
    what to do."""


def _same_run(cfg: TrainConfig, new: dict) -> bool:
    """True if the run folder exists with config.json ``new`` (_config_dict); raises if it holds a different run.

    A folder with config.json but no last.pt, best.pt or DONE holds nothing trained and nothing to resume (a
    first try that stopped on a bad input mid-epoch, a crop it could not read): False, and the corrected
    command's config.json replaces it."""
    path = cfg.run_dir / "config.json"
    if not path.exists():
        return False
    old = json.loads(path.read_text())
    # a trained run never reads the merges file (only the zero-shot prompts are tokenized)
    ignored = _EXECUTION_ONLY | (_ZERO_SHOT_IGNORES if cfg.method == "zero_shot" else {"bpe"})
    diff = {k for k in set(old) | set(new) if k not in ignored and old.get(k) != new.get(k)
            and not _moved_with_the_runs(old, new, k)}
    if not diff:
        return True
    if not any((cfg.run_dir / name).exists() for name in ("last.pt", "best.pt", "DONE")):
        return False
    raise RunFolderError(f"{cfg.run_dir} holds a run with a different config ({sorted(diff)}); remove that "
                         f"folder, or write this run elsewhere: another --runs-dir (train and reproduce) or "
                         f"--run-name (train)")


def _moved_with_the_runs(old: dict, new: dict, key: str) -> bool:
    """True if input file/folder ``key`` differs only as the whole project moved: it lies where it lay relative
    to the runs folder (another mount point, a copied clone). Absolute paths are what config.json holds, so
    without this every finished run of a moved project would be refused, and only retraining would follow."""
    if key not in INPUT_FIELDS or old.get(key) is None or new.get(key) is None:
        return False
    return os.path.relpath(old[key], old["runs_dir"]) == os.path.relpath(new[key], new["runs_dir"])


@contextmanager
def _writing(cfg: TrainConfig, d: distributed.Dist):
    """Hold an exclusive lock (files.exclusive_lock) on <runs_dir>/.<name>.lock while the run folder is written:
    two processes on one folder would overwrite each other's last.pt. Only the main rank writes, so only it locks."""
    if not d.is_main:
        yield
        return
    path = Path(cfg.runs_dir) / f".{cfg.name}.lock"
    with exclusive_lock(path, RunFolderError(
            f"another process is writing {cfg.run_dir} now ({path} is locked); once it has finished, the same "
            f"command reuses or resumes its run; or write this run elsewhere: another --runs-dir (train and "
            f"reproduce) or --run-name (train)")):
        yield


def _prepare_dir(cfg: TrainConfig, config: dict, fresh: bool, d: distributed.Dist) -> None:
    """Create the run folder with config.json (``config``) if it does not hold this run yet (``fresh``)."""
    if fresh and d.is_main:
        atomic_write_text(cfg.run_dir / "config.json", json.dumps(config, indent=2) + "\n")
    distributed.barrier(d)


def _finish(cfg: TrainConfig, logits: dict, frame: pd.DataFrame, extra: dict) -> None:
    """Write predictions.csv and results.json, then DONE (last, so DONE means complete)."""
    preds = predictions_table(logits, frame, cfg.tasks)
    atomic_write(cfg.run_dir / "predictions.csv", lambda tmp: preds.to_csv(tmp, index=False))
    results = {"run": cfg.name, "method": cfg.method, "profile": cfg.profile, **extra,
               **summarize_predictions(preds, cfg.tasks)}
    atomic_write_text(cfg.run_dir / "results.json", json.dumps(results, indent=2) + "\n")
    atomic_write_text(cfg.run_dir / "DONE", "")


def _zero_shot_model(cfg: TrainConfig) -> ZeroShotClassifier:
    return ZeroShotClassifier(load_clip(cfg.checkpoint, config=cfg.model_config), cfg.bpe, cfg.tasks).eval()


def _test(cfg: TrainConfig, model: nn.Module, frame: pd.DataFrame, d: distributed.Dist, extra: dict) -> None:
    """Predict the test rows ``frame`` with ``model`` and write predictions.csv, results.json and DONE."""
    size = model_image_size(cfg.model_config)
    dataset = FaceDataset(Path(cfg.prepared), frame, cfg.tasks, eval_transform(size))
    logits = predict_logits(model, dataset, cfg, d)
    if d.is_main:
        _finish(cfg, logits, frame, extra)


def run(cfg: TrainConfig) -> Path:
    """Train (or resume) the run, evaluate its selected checkpoint on the test sets; returns the folder.

    ``method="zero_shot"`` trains nothing: the §4.2 baseline predicts the test sets. A folder with DONE
    is returned as is. Under torchrun every rank calls this; rank 0 writes."""
    config = _config_dict(cfg)  # a missing input is named, with how to get it, before anything loads
    if (cfg.run_dir / "DONE").exists() and _same_run(cfg, config):
        return cfg.run_dir
    d = distributed.setup(cfg.device)
    try:
        _same_run(cfg, config)  # a folder holding another run is refused before anything loads
        note = crop_size_note(cfg)
        if note and d.is_main:
            print(f"note: {note}", file=sys.stderr)
        # config.json only once the model and data are built from the inputs: a first try that fails on one
        # (an unreadable checkpoint, a split without labels) leaves no folder to refuse the corrected command
        test = evaluation_frame(cfg)
        if cfg.method == "zero_shot":
            model = _zero_shot_model(cfg).to(d.device)
        else:
            trainer = Trainer(cfg, d)
        with _writing(cfg, d):
            fresh = not _same_run(cfg, config)  # again: another process may have written the folder meanwhile
            _prepare_dir(cfg, config, fresh, d)
            if cfg.method == "zero_shot":
                _test(cfg, model, test, d, {})
            else:
                trainer.fit()
                distributed.barrier(d)  # rank 0 commits best.pt after the last collective of fit()
                best = read_run_state(cfg.run_dir / "best.pt")
                trainer.model.load_trainable_state_dict(best["model"])
                _test(cfg, trainer.model, test, d, {"best_epoch": best["epoch"], "epochs": trainer.progress.epoch})
            distributed.barrier(d)
    finally:
        distributed.teardown(d)
    return cfg.run_dir


@dataclass
class RunResult:
    config: TrainConfig
    epochs: list[dict]
    predictions: pd.DataFrame
    results: dict


def load_config(path: str | Path) -> TrainConfig:
    values = json.loads((Path(path) / "config.json").read_text())
    values.pop("grad_checkpointing", None)  # execution only, and replaced by checkpoint_blocks (_EXECUTION_ONLY)
    for key in _INPUTS:  # the inputs' SHA-1s, checked by _same_run, are not settings
        values.pop(key, None)
    # a run whose project moved (_moved_with_the_runs) finds its inputs where they moved with it (load_model)
    runs_dir = Path(path).resolve().parent
    for key in INPUT_FIELDS:
        if values[key] is not None and not Path(values[key]).exists():
            values[key] = os.path.normpath(runs_dir / os.path.relpath(values[key], values["runs_dir"]))
    return TrainConfig(**values)


def load_run(path: str | Path) -> RunResult:
    """A finished run folder's config, per-epoch metrics, test predictions and results."""
    path = Path(path)
    if not (path / "DONE").exists():
        raise FileNotFoundError(f"{path} is not a finished run (no DONE); run the same train command again")
    metrics = path / "metrics.jsonl"
    epochs = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.exists() else []
    return RunResult(load_config(path), epochs, pd.read_csv(path / "predictions.csv"),
                     json.loads((path / "results.json").read_text()))


def load_model(path: str | Path, device: str = "cpu") -> nn.Module:
    """The run's selected model (best.pt; zero-shot: the classifier) in eval mode, for analyses."""
    cfg = load_config(path)
    if cfg.method == "zero_shot":
        return _zero_shot_model(cfg).to(device)
    model = build_model(cfg).model
    model.load_trainable_state_dict(read_run_state(Path(path) / "best.pt")["model"])
    return model.to(device).eval()


# --- command line -------------------------------------------------------------------------------------
# `train --help`: what each TrainConfig field does (its default follows, per profile where the profile sets it)
_FLAG_HELP = {
    "method": "one of " + ", ".join(RUN_METHODS),
    "tasks": "comma list of " + ", ".join(TASKS) + " (mtlora: two or more)",
    "weighting": "§3.7.3 loss weighting: uw | ema (multi-task, default uw) | none (single-task)",
    "model_config": "model architecture (config.CONFIGS)",
    "checkpoint": "encoder weights (Meta's .pt, timm's or open_clip's .safetensors; \"\": random initialisation)",
    "bpe": "BPE merges file of the text tower (zero-shot only)",
    "prepared": "folder of manifest.csv and the face crops (`prepare --out`)",
    "runs_dir": "folder the run folder is made in",
    "batch_size": "images per optimiser step",
    "max_epochs": "epochs at most, if early stopping has not ended the run",
    "patience": "§3.1 early stopping: epochs without improvement before the run ends",
    "lr_head": "learning rate of the heads, the pooler and its adapters, UW's log-variances",
    "lr_backbone": "learning rate of FT4's blocks and of the backbone adapters' A and DoRA magnitudes (their B: "
                   "6x, LoRA+)",
    "weight_decay": "AdamW weight decay (§3.1), on every trained weight but UW's log-variances",
    "amp": "mixed precision: fp16 (with a GradScaler, §3.1), bf16 or none",
    "seed": "seed of the initialisation, sampling, augmentation and --max-train-samples",
    "num_workers": "image-loading processes (0: in the training process)",
    "checkpoint_blocks": "the first N blocks are activation-checkpointed (0: none)",
    "emotion_share": "§3.7.2: the emotion rows' share of a multi-task run's training draws, by whole copies",
    "max_train_samples": "train on this many rows drawn from the training split (a time budget)",
    "cache_embeddings": "LP only: embed every image once without augmentation, a speed option that departs "
                        "from §3.1",
    "checkpoint_every": "optimiser steps between the mid-epoch saves of last.pt",
    "device": "cpu, cuda or cuda:N",
    "run_name": "the run folder's name, instead of one made from method, tasks, weighting, samples and seed",
}


def _flag_help(f: dataclasses.Field) -> str:
    """`train --help` for a TrainConfig field: what it does, then its default in each profile."""
    def shown(v):
        return "not set" if v is None else f"{v:g}" if isinstance(v, float) else str(v)

    if f.name in ("method", "tasks", "weighting"):  # required, or chosen by the tasks
        return _FLAG_HELP[f.name]
    if f.name in RUN_FIELDS:  # the profile's value is the default (README, "Two profiles")
        default = "; ".join(f"{name}: {shown(getattr(p, f.name))}" for name, p in PROFILES.items())
    elif f.name == "checkpoint_blocks":
        full_blocks = ", ".join(f"{m} {n}" for m, n in PROFILES["full"].checkpoint_blocks.items())
        default = f"the profile's for the method (full: {full_blocks}), else 0"
    else:
        default = shown(f.default)
    return f"{_FLAG_HELP[f.name]} (default: {default})"


def parse_config(argv: list[str]) -> TrainConfig:
    """``python3 -m replication train --method M --tasks age,gender,emotion [--weighting uw|ema]
    [--profile demo|full] [--<field> value ...]``: the profile's settings, every TrainConfig field
    overridable by its flag."""
    parser = argparse.ArgumentParser(prog="python3 -m replication train", description=inspect.cleandoc(
        parse_config.__doc__), formatter_class=HelpFormatter)
    parser.add_argument("--profile", default="demo", choices=sorted(PROFILES),
                        help="the folders and settings every other flag overrides")
    for f in fields(TrainConfig):
        if f.name == "profile":
            continue
        flag = "--" + f.name.replace("_", "-")
        help_ = _flag_help(f)
        if f.type in ("bool", bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_)
        else:
            kind = {"int": int, "float": float, "int | None": int}.get(str(f.type), str)
            parser.add_argument(flag, type=kind, default=None, required=f.name in ("method", "tasks"), help=help_)
    args = vars(parser.parse_args(argv))
    profile = get_profile(args.pop("profile"))
    values = {k: (str(v) if isinstance(v, Path) else v) for k, v in profile.run_settings().items()}
    values["checkpoint_blocks"] = profile.checkpoint_blocks.get(args["method"], 0)
    optional = {f.name for f in fields(TrainConfig) if "None" in str(f.type)}
    # given flags override the profile; an empty value clears an optional one (--checkpoint "" = random init)
    values.update({k: (None if v == "" and k in optional else v) for k, v in args.items() if v is not None})
    tasks = [t for t in values["tasks"].split(",") if t]  # as TrainConfig reads them ("age," is one task)
    values.setdefault("weighting", "uw" if len(tasks) > 1 else "none")
    try:  # a bad method, task list, weighting or amp: one line naming the valid values, before any work
        cfg = TrainConfig(profile=profile.name, **values)
    except ValueError as err:
        parser.error(str(err))
    if cfg.profile == "full" and cfg.checkpoint is None:
        parser.error(f"the full profile needs --checkpoint (PE-Core weights: {PE_CORE_WEIGHTS}); random weights "
                     f"are for tests only")
    if cfg.method == "zero_shot" and cfg.bpe is None:  # §4.2: the prompts go through the text tower
        parser.error(f"zero_shot needs --bpe (the text tower's merges file: {CLIP_MERGES})")
    if cfg.cache_embeddings and cfg.method != "lp":  # ignored by the engine, yet recorded in config.json
        parser.error(f"--cache-embeddings is for --method lp only (the embeddings of its frozen encoder are "
                     f"cached), got --method {cfg.method}")
    problem = args["checkpoint_blocks"] is not None and checkpoint_blocks_problem(args["checkpoint_blocks"],
                                                                                  cfg.model_config)
    if problem:
        parser.error(problem)
    return cfg


def cli(argv: list[str] | None = None) -> int:
    """``python3 -m replication train ...`` (see parse_config): one run, then its §4 average test accuracy per
    task (and over the three tasks when it learns all three)."""
    cfg = parse_config(sys.argv[1:] if argv is None else argv)
    # checked by the command, not by parse_config or TrainConfig: what the machine has does not change the config
    # (the full profile's cuda is read on a CPU machine too, by load_config and by the tests)
    problem = distributed.device_problem(cfg.device)
    if problem:
        print(f"train: error: {problem}", file=sys.stderr)
        return 2
    finished = (cfg.run_dir / "DONE").exists()
    if not finished:  # a finished run is only read back (its folder may be read-only)
        try:  # made only once the model and data are built (_writing): a file in the way failed there
            check_writable(cfg.runs_dir, "folder")
        except OSError as err:
            print(f"train: error: --runs-dir {err}", file=sys.stderr)
            return 2

    def train() -> int:
        folder = run(cfg)
        if int(os.environ.get("RANK", "0")) == 0:
            if finished:
                print(f"train: {folder} was already finished: its test results are read back, nothing was trained",
                      file=sys.stderr)
            results = load_run(folder).results
            print(json.dumps({"run": str(folder),
                              "average_accuracy": {t: r["average_accuracy"] for t, r in results["tasks"].items()},
                              **{k: v for k, v in results.items() if k == "overall_average_accuracy"}}))
        return 0

    again = ("runs it again (the zero-shot baseline trains nothing)" if cfg.method == "zero_shot" else
             f"resumes {cfg.run_dir} from its last checkpoint (last.pt, written every {cfg.checkpoint_every} "
             f"steps and at each epoch's end)")
    # the user's to fix, not a bug: one line, no traceback
    return reported("train", train, (MissingInputError, ManifestError, PreparedFolderError, RunFolderError,
                                     BatchSizeError, CheckpointError, RunStateError, MergesError), resume=again)


if __name__ == "__main__":
    sys.exit(cli())
