"""Engine: run folder contents, resumption after kill -9 (bit-identical), selection, LP cache, zero-shot.

Runs use the real methods (replication.methods) on the demo-tiny PE-Core architecture with random
weights (checkpoint None), a few dozen 64x64 images, CPU."""
from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from replication import engine, runs
from replication.checkpoint import CheckpointError
from replication.engine import TrainConfig
from replication.labels import TASKS
from replication.losses import make_weighting
from replication.runs import load_run, run

sys.path.insert(0, str(Path(__file__).parent))
from engine_helpers import write_prepared  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return write_prepared(tmp_path_factory.mktemp("prepared"))


def _cfg(prepared, runs_dir, **kw):
    base = dict(method="ft4", tasks=("age", "gender", "emotion"), weighting="uw", prepared=str(prepared),
                runs_dir=str(runs_dir), batch_size=8, max_epochs=2, patience=10, lr_head=1e-2, lr_backbone=1e-2,
                seed=3, checkpoint_every=2)
    base.update(kw)
    return TrainConfig(**base)


def test_multitask_run_writes_run_folder_and_is_not_retrained(prepared, tmp_path, monkeypatch):
    cfg = _cfg(prepared, tmp_path)
    folder = run(cfg)
    assert folder == tmp_path / cfg.name
    for name in ("config.json", "metrics.jsonl", "best.pt", "last.pt", "predictions.csv", "results.json", "DONE"):
        assert (folder / name).exists(), name
    result = load_run(folder)
    assert result.config == cfg
    assert [e["epoch"] for e in result.epochs] == [1, 2]
    first = result.epochs[0]
    assert set(first["val_accuracy"]) == {"age", "gender", "emotion"}
    assert set(first["log_variances"]) == {"age", "gender", "emotion"}  # UW s_k logged each epoch (Fig 4.1)
    # the s_k are trained (they leave their start at 0 from the first epoch on), the last epoch logs those of last.pt,
    # and each task weight is e^{-s_k}
    assert all(s != 0 for s in first["log_variances"].values())
    trained = torch.load(folder / "last.pt", weights_only=False)["weighting"]["log_vars"].double()
    assert result.epochs[-1]["log_variances"] == dict(zip(cfg.tasks, trained.tolist()))
    assert result.epochs[-1]["task_weights"] == pytest.approx({t: math.exp(-s) for t, s in
                                                               zip(cfg.tasks, trained.tolist())}, rel=1e-12)
    assert first["lr"]["uncertainty_weighting"] == cfg.lr_head
    # predictions: one row per test image and task, only on that task's test sets
    p = result.predictions
    assert list(p.columns) == ["path", "dataset", "task", "label", "pred"]
    assert sorted(p[p.task == "emotion"].dataset.unique()) == ["rafdb"]
    assert sorted(p[p.task == "age"].dataset.unique()) == ["fairface", "utkface", "vggface2"]
    assert len(p) == 8 * 3 * 2 + 8
    assert "overall_average_accuracy" in result.results
    assert result.results["tasks"]["age"]["average_over"] == ["utkface", "fairface"]
    # best.pt holds the epoch with the highest average validation accuracy (§4.1 multi-task)
    best = torch.load(folder / "best.pt", weights_only=False)
    accs = [e["val_average_accuracy"] for e in result.epochs]
    assert best["epoch"] == 1 + accs.index(max(accs))
    # load_model rebuilds the selected model: it reproduces the stored test predictions
    model = runs.load_model(folder)
    assert not model.training
    rows = p[p.task == "gender"].head(6)
    images = torch.stack([engine.eval_transform(64)(Image.open(prepared / path).convert("RGB")) for path in rows.path])
    with torch.no_grad():
        assert model(images)["gender"].argmax(1).tolist() == rows.pred.tolist()
    # a finished run is not retrained
    monkeypatch.setattr(runs, "Trainer", None)
    assert run(cfg) == folder
    # a folder written before checkpoint_blocks replaced the grad_checkpointing flag still loads and is reused
    # (both are execution only)
    legacy = json.loads((folder / "config.json").read_text())
    del legacy["checkpoint_blocks"]
    (folder / "config.json").write_text(json.dumps({**legacy, "grad_checkpointing": True}))
    assert load_run(folder).config == cfg and run(replace(cfg, checkpoint_blocks=3)) == folder
    # the same folder with a different config is refused, not silently reused
    with pytest.raises(ValueError, match="different config"):
        run(_cfg(prepared, tmp_path, max_epochs=5, run_name=cfg.name))


def test_a_finished_run_moved_with_its_project_is_reused(tmp_path, monkeypatch):
    """config.json holds absolute paths: a project copied or mounted elsewhere with its data and runs keeps its
    finished runs (inputs at the same place relative to the runs folder); other inputs are still refused."""
    def cfg(root, prepared="data/prepared"):
        return _cfg(root / prepared, root / "runs", checkpoint=str(root / "data" / "ckpt.pt"))

    old = cfg(tmp_path / "a")
    for folder in ("prepared", "other"):
        (tmp_path / "a" / "data" / folder).mkdir(parents=True)
        (tmp_path / "a" / "data" / folder / "manifest.csv").write_text("path,dataset,split,age,gender,emotion\n")
    (tmp_path / "a" / "data" / "ckpt.pt").write_bytes(b"weights")
    old.run_dir.mkdir(parents=True)
    (old.run_dir / "config.json").write_text(json.dumps(runs._config_dict(old)))
    (old.run_dir / "DONE").write_text("")
    (tmp_path / "a").rename(tmp_path / "b")
    monkeypatch.setattr(runs, "Trainer", None)
    moved = cfg(tmp_path / "b")
    assert run(moved) == moved.run_dir
    # and analyses (load_model) find its frozen backbone where it moved to
    assert runs.load_config(moved.run_dir).checkpoint == moved.checkpoint
    with pytest.raises(ValueError, match=r"different config \(\['prepared'\]\)"):
        run(cfg(tmp_path / "b", prepared="data/other"))


def test_a_finished_run_whose_inputs_changed_is_refused(prepared, tmp_path, monkeypatch):
    """Same paths, other contents (data generated again, weights replaced): the run is not reused."""
    checkpoint, manifest = tmp_path / "ckpt.pt", tmp_path / "prepared" / "manifest.csv"
    checkpoint.write_bytes(b"weights")
    manifest.parent.mkdir()
    manifest.write_text((prepared / "manifest.csv").read_text())
    cfg = _cfg(manifest.parent, tmp_path / "runs", checkpoint=str(checkpoint))
    cfg.run_dir.mkdir(parents=True)
    (cfg.run_dir / "config.json").write_text(json.dumps(runs._config_dict(cfg)))
    (cfg.run_dir / "DONE").write_text("")
    monkeypatch.setattr(runs, "Trainer", None)
    assert run(cfg) == cfg.run_dir
    checkpoint.write_bytes(b"other weights")
    with pytest.raises(ValueError, match=r"different config \(\['checkpoint_sha1'\]\)"):
        run(cfg)
    checkpoint.write_bytes(b"weights")
    manifest.write_text(manifest.read_text().replace(",train,", ",val,", 1))
    with pytest.raises(ValueError, match=r"different config \(\['manifest_sha1'\]\)"):
        run(cfg)
    # the merges file counts only for the zero-shot baseline: a trained run needs none, and ignores a new one
    assert "bpe_sha1" not in runs._config_dict(replace(cfg, bpe=str(tmp_path / "absent.txt.gz")))
    with pytest.raises(FileNotFoundError, match="BPE merges file not found"):
        runs._config_dict(replace(cfg, method="zero_shot", bpe=str(tmp_path / "absent.txt.gz")))


def test_paths_are_absolute_so_a_finished_run_is_found_from_any_folder(prepared, tmp_path, monkeypatch):
    """`train --prepared data/demo/prepared` names the folder the cwd gives it, once: config.json holds it
    absolute, so the run is the same for a later command with absolute paths started elsewhere (a notebook)."""
    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    (project / "data" / "manifest.csv").write_text((prepared / "manifest.csv").read_text())
    monkeypatch.chdir(project)
    relative = _cfg("data", "runs", method="lp", tasks=("age",), weighting="none", checkpoint="ckpt.pt",
                    bpe="bpe.txt")
    assert [relative.prepared, relative.runs_dir, relative.checkpoint, relative.bpe] == [
        str(project / name) for name in ("data", "runs", "ckpt.pt", "bpe.txt")]
    # as `train --prepared data` beside the profile's absolute runs folder
    relative = _cfg("data", project / "runs", method="lp", tasks=("age",), weighting="none")
    relative.run_dir.mkdir(parents=True)
    (relative.run_dir / "config.json").write_text(json.dumps(runs._config_dict(relative)))
    (relative.run_dir / "DONE").write_text("")
    monkeypatch.setattr(runs, "Trainer", None)
    monkeypatch.chdir(tmp_path)
    absolute = _cfg(project / "data", project / "runs", method="lp", tasks=("age",), weighting="none")
    assert run(absolute) == absolute.run_dir
    assert runs.load_config(absolute.run_dir) == absolute


def test_train_command_reports_a_bad_value_in_one_line_naming_the_valid_ones(capsys):
    """Refused before any model is built or folder written, by argparse's one-line error, not a traceback."""
    for argv, expected in (
            (["--method", "foo", "--tasks", "age"], "method must be one of zero_shot, lp, ap, ft4, lora, dora, "
                                                    "mtlora, got 'foo'"),
            (["--method", "lp", "--tasks", "age,nose"], "tasks must be a non-empty subset of age, gender, emotion"),
            (["--method", "lp", "--tasks", "age,age"], "each once"),
            (["--method", "lp", "--tasks", "age", "--weighting", "uw"], "weighting must be 'none' for a single-task"),
            (["--method", "ft4", "--tasks", "age,gender", "--weighting", "sum"], "weighting must be uw, ema or none"),
            # an unweighted sum of the task losses: trained, though the help says none is single-task's
            (["--method", "ft4", "--tasks", "age,gender", "--weighting", "none"], "weighting must be uw or ema for a "
             "multi-task run (§3.7.3), got 'none': it is the single-task runs' plain cross-entropy"),
            (["--method", "lp", "--tasks", "age", "--amp", "fp8"], "amp must be bf16, fp16 or none, got 'fp8'"),
            (["--method", "lp", "--tasks", "age", "--profile", "thesis"], "invalid choice: 'thesis'"),
            (["--method", "lp", "--tasks", "age", "--model-config", "PE-Core-L14"], "--model-config must be one of "
             "PE-Core-T16-384, PE-Core-S16-384, PE-Core-B16-224, PE-Core-L14-336, PE-Core-G14-448, demo-tiny, got "
             "'PE-Core-L14'"),
            (["--method", "lp", "--tasks", "age", "--batch-size", "0"], "--batch-size must be >= 1, got 0"),
            (["--method", "mtlora", "--tasks", "gender"], "mtlora learns several tasks (§3.6.1: the last block and "
             "the pooling have one adapter set per task), so --tasks must name two or more, got 'gender'; the "
             "single-task method with the same backbone adapters is dora"),
            (["--method", "lora", "--tasks", "age", "--checkpoint-blocks", "7"], "--checkpoint-blocks 7: demo-tiny has 6 "
             "blocks"),
            (["--method", "lp", "--tasks", "age", "--max-train-samples", "0"],
             "--max-train-samples must be >= 1 (not set: every training row), got 0"),
            (["--method", "lp", "--tasks", "age", "--run-name", "../escape"], "--run-name must be a folder name, "
             "without a path separator and not '.' or '..' (the run is written to --runs-dir/<run name>), got "
             "'../escape'"),
            # ignored by the engine, yet recorded in config.json: the same command without it was then refused
            (["--method", "ft4", "--tasks", "age", "--cache-embeddings"], "--cache-embeddings is for --method lp "
             "only (the embeddings of its frozen encoder are cached), got --method ft4")):
        with pytest.raises(SystemExit):
            runs.parse_config(argv)
        assert expected in capsys.readouterr().err.splitlines()[-1], argv
    assert runs.parse_config(["--method", "lp", "--tasks", "age", "--cache-embeddings"]).cache_embeddings
    assert not runs.parse_config(["--method", "ft4", "--tasks", "age", "--no-cache-embeddings"]).cache_embeddings


def test_train_config_checks_its_numbers_and_run_name():
    """Programmatic runs (notebooks, reproduce) too: each number is named by its flag with its allowed values; a
    zero batch used to end in ZeroDivisionError, a zero or negative epoch count or learning rate ran silently."""
    for field, value, allowed in (
            ("batch_size", -8, ">= 1"), ("max_epochs", 0, ">= 1"), ("max_epochs", -1, ">= 1"),
            ("patience", -1, ">= 1 (epochs without improvement before stopping)"),
            ("patience", 0, ">= 1 (epochs without improvement before stopping)"), ("lr_head", -0.1, "> 0"),
            ("lr_backbone", float("nan"), "> 0"), ("weight_decay", -0.01, ">= 0"), ("seed", -1, ">= 0"),
            ("num_workers", -1, ">= 0 (0: images load in the training process)"),
            ("checkpoint_blocks", -1, ">= 0 (0: none)"),
            ("emotion_share", 1.5, "in (0, 1) (the emotion rows' share of the training draws)"),
            ("emotion_share", 0.0, "in (0, 1) (the emotion rows' share of the training draws)"),
            ("emotion_share", 1.0, "in (0, 1) (the emotion rows' share of the training draws)"),
            ("max_train_samples", -5, ">= 1 (not set: every training row)"),
            ("checkpoint_every", 0, ">= 1 (steps between mid-epoch saves of last.pt)")):
        with pytest.raises(ValueError) as err:
            TrainConfig(method="lp", tasks=("age",), weighting="none", **{field: value})
        assert str(err.value) == f"--{field.replace('_', '-')} must be {allowed}, got {value}"
    for name in ("../escape", "a/b", ".", ".."):
        with pytest.raises(ValueError, match="--run-name must be a folder name"):
            TrainConfig(method="lp", tasks=("age",), weighting="none", run_name=name)
    cfg = TrainConfig(method="lp", tasks=("age",), weighting="none", runs_dir="/r", run_name="a..b",
                      max_train_samples=1, batch_size=1, emotion_share=0.5)
    assert cfg.run_dir == Path("/r/a..b")


def test_train_command_names_a_device_this_machine_lacks(tmp_path, monkeypatch, capsys):
    """One line before any work (torch used to fail deep inside the first CUDA call), from the command: the
    config itself does not depend on the machine (the full profile's cuda is read on a CPU one too)."""
    argv = ["--method", "lp", "--tasks", "age", "--runs-dir", str(tmp_path / "runs"), "--device"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(runs, "run", None)
    for device, message in (("gpu", "--device 'gpu' is not a torch device (e.g. cpu, cuda, cuda:1)"),
                            ("cuda", "--device cuda but CUDA is not available"),
                            ("cuda:0", "--device cuda:0 but CUDA is not available")):
        assert runs.cli(argv + [device]) == 2
        assert capsys.readouterr().err == f"train: error: {message}\n"
    assert runs.parse_config(argv + ["cuda"]).device == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert runs.cli(argv + ["cuda:2"]) == 2
    assert capsys.readouterr().err == ("train: error: --device cuda:2 but this machine has only 2 GPU(s), numbered "
                                       "from 0\n")
    assert not (tmp_path / "runs").exists()


def test_train_command_names_a_runs_dir_that_cannot_be_a_folder(tmp_path, monkeypatch, capsys):
    """A file as --runs-dir, or above it, was FileExistsError's or NotADirectoryError's traceback once the model
    and data were built; now one line before any work."""
    monkeypatch.setattr(runs, "run", lambda cfg: pytest.fail("trained with a --runs-dir it cannot write"))
    (tmp_path / "afile").write_text("")
    for runs_dir, message in ((tmp_path / "afile", f"{tmp_path / 'afile'} is a file; expected a folder"),
                              (tmp_path / "afile" / "sub", f"{tmp_path / 'afile' / 'sub'}: {tmp_path / 'afile'} is a "
                                                           f"file, not a folder")):
        assert runs.cli(["--method", "lp", "--tasks", "age", "--runs-dir", str(runs_dir)]) == 2
        assert capsys.readouterr().err == f"train: error: --runs-dir {message}\n"


def test_train_command_reports_a_missing_input_without_a_traceback(tmp_path, capsys):
    code = runs.cli(["--method", "lp", "--tasks", "age", "--prepared", str(tmp_path / "nowhere"),
                       "--runs-dir", str(tmp_path / "runs"), "--checkpoint", ""])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"train: error: prepared manifest not found: {tmp_path / 'nowhere'}")
    assert "Traceback" not in err and not (tmp_path / "runs").exists()


def test_train_command_says_prepared_takes_the_folder_of_the_manifest(prepared, tmp_path, capsys):
    """manifest.csv given for its folder was looked for as manifest.csv/manifest.csv, and `prepare --out
    .../manifest.csv` offered to make it; the folder is named, also with another input missing."""
    for profile in ("demo", "full"):
        assert runs.cli(["--profile", profile, "--method", "lp", "--tasks", "age", "--prepared",
                         str(prepared / "manifest.csv"), "--runs-dir", str(tmp_path / "runs"), "--checkpoint",
                         str(tmp_path / "missing.pt"), "--device", "cpu"]) == 2
        assert capsys.readouterr().err == (f"train: error: --prepared {prepared / 'manifest.csv'} is a file; it takes "
                                           f"the folder holding manifest.csv: --prepared {prepared}\n")
    assert not (tmp_path / "runs").exists()


def test_train_command_reports_a_bad_manifest_value_without_a_traceback(tmp_path, capsys):
    (tmp_path / "prepared").mkdir()
    (tmp_path / "prepared" / "manifest.csv").write_text("path,dataset,split,age,gender,emotion\n"
                                                      "crops/a.jpg,fairface,train,9,0,-1\n")
    code = runs.cli(["--method", "lp", "--tasks", "age", "--prepared", str(tmp_path / "prepared"),
                       "--runs-dir", str(tmp_path / "runs"), "--checkpoint", ""])
    err = capsys.readouterr().err
    assert code == 2 and err == (f"train: error: {tmp_path / 'prepared' / 'manifest.csv'} row 1 (line 2): age='9', "
                                 "expected an integer in -1..8\n")
    assert not (tmp_path / "runs").exists()


def _train_argv(prepared, runs_dir, *extra):
    return ["--method", "lp", "--tasks", "gender", "--prepared", str(prepared), "--runs-dir", str(runs_dir),
            "--checkpoint", "", "--batch-size", "8", "--max-epochs", "1", "--checkpoint-every", "100", *extra]


def test_train_command_reports_a_batch_larger_than_an_epoch_without_a_traceback(prepared, tmp_path, capsys):
    """The demo's batch of 64 with --max-train-samples 32 used to end in a ValueError traceback; now one line says
    what to change, before config.json is written. The fixture has 36 training rows with a gender label."""
    for extra, what in ((["--max-train-samples", "4"], "4 training draws fill no batch of 8: give a --batch-size of "
                                                       "at most 4, or a larger --max-train-samples (now 4)"),
                        (["--batch-size", "64"], f"36 training draws fill no batch of 64: give a --batch-size of at "
                                                 f"most 36, or more training rows in {prepared / 'manifest.csv'}")):
        assert runs.cli(_train_argv(prepared, tmp_path / "runs", *extra)) == 2
        assert capsys.readouterr().err == f"train: error: an epoch's {what}\n"
    assert not (tmp_path / "runs").exists()


def test_a_last_pt_that_cannot_resume_the_run_is_one_line_naming_it(prepared, tmp_path, capsys):
    """A damaged last.pt (empty, junk), one written by 2 processes, or one of another code version's model used
    to end in torch's traceback; now one line names the file, what is wrong and the way out."""
    argv = _train_argv(prepared, tmp_path / "runs")
    assert runs.cli(argv) == 0
    folder = runs.parse_config(argv).run_dir
    (folder / "DONE").unlink()  # as if killed after the last epoch's last.pt: the next command resumes from it
    last = folder / "last.pt"
    good = torch.load(last, weights_only=False)
    capsys.readouterr()
    out_of_band = f"remove the folder {folder} to train this run from the start"
    for content, what in ((b"", f"{last} cannot be read (EOFError: "),
                          (b"not a checkpoint", f"{last} cannot be read (UnpicklingError: "),
                          ({**good, "rng": good["rng"] * 2},
                           f"{last} was written by 2 processes, this run has 1: resume with as many (torchrun "
                           f"--nproc_per_node 2), or {out_of_band}"),
                          ({**good, "model": {"head.weight": torch.zeros(1)}},
                           f"{last} does not fit this run's model or optimizer (written by another version of the "
                           f"code?): KeyError: ")):
        if isinstance(content, bytes):
            last.write_bytes(content)
        else:
            torch.save(content, last)
        assert runs.cli(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"train: error: {what}") and err.endswith(f"{out_of_band}\n"), err
        assert len(err.splitlines()) == 1 and not (folder / "DONE").exists()
    torch.save(good, last)
    assert runs.cli(argv) == 0 and (folder / "DONE").exists()


def test_a_batch_that_the_processes_cannot_share_is_a_batch_size_error(prepared, tmp_path, monkeypatch):
    from replication import distributed

    monkeypatch.setattr(engine, "DistributedDataParallel", lambda objective, **kwargs: objective)  # no group here
    with pytest.raises(engine.BatchSizeError, match=r"^--batch-size 8 is not divisible by the 3 processes, which "
                                                    r"take equal shares of each batch: give a multiple of 3$"):
        engine.Trainer(_cfg(prepared, tmp_path), distributed.Dist(rank=0, world_size=3))


def test_train_command_reports_an_unusable_checkpoint_without_a_traceback(prepared, tmp_path, capsys):
    """Random bytes, text (a Git LFS pointer), an empty file, a truncated download, a folder, or the weights of
    another --model-config: the checkpoint module's message, one line per problem, and no run folder."""
    from replication.checkpoint import save_clip_meta_layout
    from replication.config import get_config
    from replication.pe import VisionTransformer

    good = tmp_path / "demo-tiny.pt"
    save_clip_meta_layout(VisionTransformer(get_config("demo-tiny").vision), good)
    files = {"random.pt": np.random.default_rng(0).bytes(4096), "empty.pt": b"",
             "lfs.pt": b"version https://git-lfs.github.com/spec/v1\n",
             "truncated.pt": good.read_bytes()[:len(good.read_bytes()) // 2]}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        assert runs.cli(_train_argv(prepared, tmp_path / "runs", "--checkpoint", str(tmp_path / name))) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"train: error: {tmp_path / name} ({len(data):,} bytes) is not a readable PyTorch "
                              f"checkpoint (torch.load raised "), name
        assert len(err.splitlines()) == 1, name
    assert runs.cli(_train_argv(prepared, tmp_path / "runs", "--checkpoint", str(good), "--model-config",
                                  "PE-Core-T16-384")) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"train: error: checkpoint {good} does not match the model:\n  missing keys (")
    assert "Traceback" not in err
    assert runs.cli(_train_argv(prepared, tmp_path / "runs", "--checkpoint", str(tmp_path))) == 2
    assert capsys.readouterr().err == (f"train: error: checkpoint {tmp_path} is a folder; expected a checkpoint file "
                                       f"(.pt, .bin or .safetensors)\n")
    assert not (tmp_path / "runs").exists()


def test_train_help_says_what_each_option_does_and_each_profiles_default(capsys):
    """Every option of `train --help` says what it does before its default (it once gave `--seed` and
    `--checkpoint-every` a bare "default: ..."), the profile's where the profile sets it."""
    with pytest.raises(SystemExit):
        runs.parse_config(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--batch-size BATCH_SIZE images per optimiser step (default: demo: 64; full: 128)" in out
    assert "--checkpoint-blocks CHECKPOINT_BLOCKS the first N blocks are activation-checkpointed (0: none) (default: " \
           "the profile's for the method (full: lora 18, dora 19, mtlora 21), else 0)" in out
    assert "--seed SEED seed of the initialisation, sampling, augmentation and --max-train-samples (default: 0)" in out
    assert set(runs._FLAG_HELP) == {f.name for f in dataclasses.fields(runs.TrainConfig)} - {"profile"}


def test_a_first_try_that_fails_on_its_inputs_leaves_no_run_folder(prepared, tmp_path):
    """A run folder's config.json refuses every other config: a first try that fails on a bad input must not
    write it, or the corrected command is refused. Missing inputs are named with how to get them: the demo's
    are made by its own commands (its tiny encoder is no Hugging Face download), the full profile's are not."""
    with pytest.raises(ValueError, match="method must be one of zero_shot, lp"):
        _cfg(prepared, tmp_path, method="qlora")
    with pytest.raises(FileNotFoundError) as err:
        run(_cfg(tmp_path / "nowhere", tmp_path, checkpoint=str(tmp_path / "demo.pt")))
    message = str(err.value)
    assert f"prepared manifest not found: {tmp_path / 'nowhere' / 'manifest.csv'}\n" in message
    assert f"checkpoint not found: {tmp_path / 'demo.pt'}\n" in message
    assert (f"--out {tmp_path / 'nowhere'} --detector boxes --size 64\n  python3 -m replication pretrain --prepared "
            f"{tmp_path / 'nowhere'} --checkpoint {tmp_path / 'demo.pt'}") in message  # the folders it was given
    assert "Hugging Face" not in message
    with pytest.raises(FileNotFoundError, match=r"checkpoint not found: .*PE-Core-L14-336.pt \(PE-Core weights: "
                                                r"Hugging Face facebook/PE-Core-L14-336"):
        run(_cfg(prepared, tmp_path, profile="full", checkpoint=str(tmp_path / "PE-Core-L14-336.pt")))
    # a checkpoint of another model fails only as the model is built: still before config.json
    torch.save({"proj": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="does not match the model"):
        run(_cfg(prepared, tmp_path, checkpoint=str(tmp_path / "other.pt")))
    assert [p.name for p in tmp_path.iterdir()] == ["other.pt"]


def test_a_folder_holding_another_run_says_how_to_keep_both(prepared, tmp_path):
    """`reproduce` has no --run-name: the way out must be one that both commands have."""
    cfg = _cfg(prepared, tmp_path)
    cfg.run_dir.mkdir(parents=True)
    (cfg.run_dir / "config.json").write_text(json.dumps(runs._config_dict(replace(cfg, max_epochs=5))))
    (cfg.run_dir / "last.pt").write_bytes(b"")
    with pytest.raises(ValueError, match=r"different config \(\['max_epochs'\]\); remove that folder, or write "
                                         r"this run elsewhere: another --runs-dir \(train and reproduce\) or "
                                         r"--run-name \(train\)"):
        run(cfg)


def test_only_execution_settings_may_differ_in_a_kept_run_folder(prepared, tmp_path):
    """A folder holding a run is resumed or reused only by a config that computes the same numbers: how it
    executes (workers, checkpoint interval, device, activation checkpointing; a trained run's merges file) may
    differ, every setting of the training or of its inputs may not. The zero-shot baseline trains nothing and
    ignores the training settings, not the encoder it predicts with."""
    cfg = _cfg(prepared, tmp_path, run_name="kept")
    cfg.run_dir.mkdir(parents=True)
    (cfg.run_dir / "config.json").write_text(json.dumps(runs._config_dict(cfg)))
    (cfg.run_dir / "last.pt").write_bytes(b"")
    for field, value in (("num_workers", 4), ("checkpoint_every", 7), ("device", "cuda"), ("checkpoint_blocks", 2),
                         ("bpe", str(tmp_path / "merges.txt"))):
        other = replace(cfg, **{field: value})
        assert runs._same_run(other, runs._config_dict(other)) is True, field
    for field, value in (("seed", 4), ("lr_head", 0.5), ("lr_backbone", 0.5), ("weighting", "ema"), ("amp", "bf16"),
                         ("batch_size", 4), ("patience", 3), ("max_train_samples", 20), ("weight_decay", 0.1),
                         ("emotion_share", 0.5), ("cache_embeddings", True), ("method", "lora"),
                         ("model_config", "PE-Core-T16-384")):
        other = replace(cfg, **{field: value})
        with pytest.raises(runs.RunFolderError, match=rf"different config \(\['{field}'\]\)"):
            runs._same_run(other, runs._config_dict(other))
    checkpoint, bpe = tmp_path / "ckpt.pt", tmp_path / "bpe.txt"
    checkpoint.write_bytes(b"weights")
    bpe.write_text("#version: 0.2\na b\n")
    zero_shot = TrainConfig(method="zero_shot", tasks=("gender",), weighting="none", prepared=str(prepared),
                            runs_dir=str(tmp_path), checkpoint=str(checkpoint), bpe=str(bpe))
    zero_shot.run_dir.mkdir(parents=True)
    (zero_shot.run_dir / "config.json").write_text(json.dumps(runs._config_dict(zero_shot)))
    (zero_shot.run_dir / "DONE").write_text("")
    other = replace(zero_shot, seed=5, batch_size=3, lr_head=0.5, max_train_samples=9)
    assert runs._same_run(other, runs._config_dict(other)) is True
    for path, content, key in ((checkpoint, b"other weights", "checkpoint_sha1"),
                               (bpe, "#version: 0.2\na bc\n", "bpe_sha1")):
        old = path.read_bytes()
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        with pytest.raises(runs.RunFolderError, match=rf"different config \(\['{key}'\]\)"):
            runs._same_run(zero_shot, runs._config_dict(zero_shot))
        path.write_bytes(old)


def test_run_names_tell_apart_runs_that_compute_different_numbers():
    """Each run of a `reproduce` batch gets its own folder: method, tasks, weighting (uw and ema of the same
    tasks), subsample size and seed all name it; the zero-shot baseline's name has none of the training ones."""
    base = dict(method="lora", tasks=("age", "gender", "emotion"), weighting="uw")
    names = [TrainConfig(**{**base, **kw}).name for kw in (
        {}, {"weighting": "ema"}, {"seed": 1}, {"max_train_samples": 100}, {"method": "dora"},
        {"tasks": ("age", "gender")}, {"tasks": ("gender",), "weighting": "none"})]
    assert len(set(names)) == len(names)
    zero_shot = {TrainConfig(method="zero_shot", tasks=("gender",), weighting="none", **kw).name
                 for kw in ({}, {"seed": 1}, {"max_train_samples": 100})}
    assert len(zero_shot) == 1


def test_results_name_the_selected_epoch_and_the_epochs_trained(prepared, tmp_path, monkeypatch):
    """results.json: best_epoch is §4.1's selection (here the first of 3 epochs: the highest validation
    accuracy), epochs the number trained; the test predictions are the selected checkpoint's."""
    records = iter([{"val_loss": {"gender": x}, "val_accuracy": {"gender": a}, "val_average_accuracy": a}
                    for x, a in ((1.0, 0.6), (0.9, 0.5), (0.8, 0.55))])
    monkeypatch.setattr(engine, "validation_metrics", lambda *args: next(records))
    cfg = _cfg(prepared, tmp_path, tasks=("gender",), weighting="none", max_epochs=3)
    result = load_run(run(cfg))
    assert result.results["best_epoch"] == 1 and result.results["epochs"] == 3
    assert torch.load(cfg.run_dir / "best.pt", weights_only=False)["epoch"] == 1
    p = result.predictions
    images = torch.stack([engine.eval_transform(64)(Image.open(prepared / path).convert("RGB")) for path in p.path])
    with torch.no_grad():
        assert runs.load_model(cfg.run_dir)(images)["gender"].argmax(1).tolist() == p.pred.tolist()


def test_done_is_written_after_the_results(prepared, tmp_path, monkeypatch):
    """DONE means complete: a run stopped while writing results.json has no DONE, so the next command finishes
    it instead of reusing a folder without results."""
    cfg = _cfg(prepared, tmp_path, tasks=("gender",), weighting="none")
    cfg.run_dir.mkdir(parents=True)
    frame = engine.evaluation_frame(cfg)
    real = runs.atomic_write_text

    def write(path, text):
        if Path(path).name == "results.json":
            raise KeyboardInterrupt
        real(path, text)

    monkeypatch.setattr(runs, "atomic_write_text", write)
    with pytest.raises(KeyboardInterrupt):
        runs._finish(cfg, {"gender": torch.zeros(len(frame), 2)}, frame, {})
    assert (cfg.run_dir / "predictions.csv").exists() and not (cfg.run_dir / "DONE").exists()


def test_a_folder_with_nothing_trained_takes_the_new_config(prepared, tmp_path):
    """config.json alone (a first try that stopped mid-epoch on a bad input) is no run to keep: it no longer
    refuses the corrected command. Any of last.pt (a run to resume), best.pt or DONE makes it one."""
    cfg = _cfg(prepared, tmp_path)
    cfg.run_dir.mkdir(parents=True)
    (cfg.run_dir / "config.json").write_text(json.dumps(runs._config_dict(replace(cfg, max_epochs=5))))
    assert runs._same_run(cfg, runs._config_dict(cfg)) is False
    for name in ("last.pt", "best.pt", "DONE"):
        (cfg.run_dir / name).write_bytes(b"")
        with pytest.raises(runs.RunFolderError, match=r"different config \(\['max_epochs'\]\)"):
            runs._same_run(cfg, runs._config_dict(cfg))
        (cfg.run_dir / name).unlink()


def test_a_crop_missing_mid_run_is_one_line_and_the_corrected_command_runs(prepared, tmp_path, capsys):
    """The audit's case: a crop of the prepared folder is gone, found as the first epoch validates (after
    config.json). `train` names it in one line; prepared again without it (another manifest), the same command
    trains instead of refusing the folder for its manifest_sha1."""
    data = tmp_path / "prepared"
    data.mkdir()
    frame = pd.read_csv(prepared / "manifest.csv")
    frame["path"] = [str(prepared / p) for p in frame["path"]]  # crops stay where they are
    gone = frame.index[(frame["split"] == "val") & (frame["gender"] >= 0)][0]
    frame.loc[gone, "path"] = str(tmp_path / "gone.jpg")
    frame.to_csv(data / "manifest.csv", index=False)
    argv = _train_argv(data, tmp_path / "runs")
    assert runs.cli(argv) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == (f"train: error: cannot read image {tmp_path / 'gone.jpg'} (manifest.csv path "
                                    f"'{tmp_path / 'gone.jpg'}'): [Errno 2] No such file or directory: "
                                    f"'{tmp_path / 'gone.jpg'}'")  # after the epoch's progress bar
    assert "Traceback" not in err
    folder = runs.parse_config(argv).run_dir
    assert sorted(p.name for p in folder.iterdir()) == ["config.json"]
    frame.drop(index=gone).to_csv(data / "manifest.csv", index=False)
    assert runs.cli(argv) == 0
    assert (folder / "DONE").exists()
    assert json.loads((folder / "config.json").read_text())["manifest_sha1"] == runs.sha1(data / "manifest.csv")


def test_train_command_prints_the_average_accuracy_of_a_single_task_run(prepared, tmp_path, monkeypatch, capsys):
    argv = ["--method", "lp", "--tasks", "gender", "--prepared", str(prepared), "--runs-dir", str(tmp_path),
            "--checkpoint", ""]
    cfg = runs.parse_config(argv)
    cfg.run_dir.mkdir(parents=True)
    (cfg.run_dir / "config.json").write_text(json.dumps(runs._config_dict(cfg)))
    (cfg.run_dir / "results.json").write_text(json.dumps({"tasks": {"gender": {"average_accuracy": 0.75}}}))
    (cfg.run_dir / "predictions.csv").write_text("path,dataset,task,label,pred\n")
    (cfg.run_dir / "DONE").write_text("")
    monkeypatch.setattr(runs, "Trainer", None)
    assert runs.cli(argv) == 0
    out, err = capsys.readouterr()
    assert json.loads(out) == {"run": str(cfg.run_dir), "average_accuracy": {"gender": 0.75}}
    assert err == f"train: {cfg.run_dir} was already finished: its test results are read back, nothing was trained\n"
    # the same folder asked for with another setting: one line saying how to keep both, no traceback
    assert runs.cli(argv + ["--max-epochs", "3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"train: error: {cfg.run_dir} holds a run with a different config (['max_epochs'])")
    assert len(err.splitlines()) == 1


def test_the_entry_point_lists_its_commands_and_names_an_unknown_one(capsys):
    from replication.__main__ import COMMANDS, main

    assert main([]) == 0
    out = capsys.readouterr().out
    assert all(f"  {name}" in out for name in COMMANDS)
    assert out.rstrip().endswith("`python3 -m replication <command> --help` gives the command's options.")
    assert main(["trian"]) == 2 and capsys.readouterr().err.strip() == "unknown command 'trian'"


def test_the_entry_point_hands_the_rest_of_the_line_to_the_command(monkeypatch, capsys):
    """`python3 -m replication X args` calls X's module's cli with args (not X itself); --help and -h list the
    commands in aligned columns; with no argument given, sys.argv (less the program) is read."""
    import types

    from replication.__main__ import COMMANDS, main

    seen = []
    monkeypatch.setitem(sys.modules, "fake_command", types.SimpleNamespace(cli=lambda argv: seen.append(argv) or 7))
    monkeypatch.setitem(COMMANDS, "fake", ("fake_command", "a command for the test"))
    assert main(["fake", "--x", "1"]) == 7 and seen == [["--x", "1"]]
    monkeypatch.setattr(sys, "argv", ["python3 -m replication", "fake", "y"])
    assert main() == 7 and seen[-1] == ["y"]
    for flag in ("-h", "--help"):
        assert main([flag]) == 0
        out, err = capsys.readouterr()
        assert err == "" and "  fake       a command for the test\n" in out and "  demo-data  generate" in out


def test_ctrl_c_before_a_command_handles_it_is_one_line(monkeypatch, capsys, tmp_path):
    """Ctrl-C while the command's module (torch) is still importing, or in a command with nothing to resume, was a
    KeyboardInterrupt traceback; a command's own message (train's "resumes ...") comes from its cli."""
    import types

    from replication.__main__ import COMMANDS, main

    def interrupted(argv):
        raise KeyboardInterrupt

    (tmp_path / "slow_import_command.py").write_text("raise KeyboardInterrupt\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(sys.modules, "fake_command", types.SimpleNamespace(cli=interrupted))
    for name, module in (("fake", "fake_command"), ("slow", "slow_import_command")):
        monkeypatch.setitem(COMMANDS, name, (module, "a command for the test"))
        assert main([name]) == 130 and capsys.readouterr().err == f"\n{name}: interrupted\n"


def test_the_entry_point_imports_torch_only_inside_its_ctrl_c_handler():
    """`python3 -m replication` imports the package, then __main__, before main's try block: torch imported by
    either (the public API did) made Ctrl-C in the first second or two a traceback. The public names still
    resolve, to the defining modules' own objects, for `import replication` and `from replication import`."""
    script = ("import sys, replication\n"
              "assert 'torch' not in sys.modules, 'import replication'\n"
              "assert {'load_clip', 'load_vision', 'tokenize', 'get_config'} <= set(dir(replication))\n"
              "from replication import load_clip\n"
              "from replication.checkpoint import load_vision\n"
              "from replication.config import get_config\n"
              "from replication.tokenizer import tokenize\n"
              "assert (load_clip, replication.load_vision, replication.get_config, replication.tokenize) == "
              "(replication.checkpoint.load_clip, load_vision, get_config, tokenize)\n"
              "assert replication.__all__ == ['load_clip', 'load_vision', 'tokenize', 'get_config']\n"
              "try:\n    replication.nothing\nexcept AttributeError as e:\n    print(e)\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout == "module 'replication' has no attribute 'nothing'\n", done.stderr
    # -X importtime lists on stderr every module imported (by the package, by __main__ as runpy runs it): no torch
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "replication", "--help"], cwd=REPO,
                          capture_output=True, text=True)
    imported = [line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines()]
    assert done.returncode == 0 and "replication" in imported
    assert not [name for name in imported if name.split(".")[0] == "torch"]


def test_a_command_on_windows_is_one_line_pointing_to_wsl(monkeypatch, capsys):
    """On Windows `import fcntl` (runs.py) failed with a bare ModuleNotFoundError; now no command starts there."""
    import types

    import replication.__main__ as entry

    monkeypatch.setattr(entry, "os", types.SimpleNamespace(name="nt"))
    monkeypatch.setattr(entry, "importlib", types.SimpleNamespace(import_module=lambda name: pytest.fail(name)))
    assert entry.main(["train", "--help"]) == 2
    assert capsys.readouterr().err == ("train: error: this project runs on Linux or macOS; on Windows, run it "
                                       "inside WSL2\n")


@pytest.mark.parametrize("name", ["demo-data", "prepare", "pretrain", "counts", "train", "reproduce", "bench"])
def test_each_command_is_its_own_module(name, capsys):
    """Each name dispatches to the module whose parser is that command's (its usage line names it)."""
    from replication.__main__ import main

    with pytest.raises(SystemExit) as exit_:
        main([name, "--help"])
    assert exit_.value.code == 0 and capsys.readouterr().out.startswith(f"usage: python3 -m replication {name} ")


def test_an_interrupted_train_says_how_to_resume(tmp_path, monkeypatch, capsys):
    def interrupted(cfg):
        raise KeyboardInterrupt
    monkeypatch.setattr(runs, "run", interrupted)
    argv = ["--method", "lp", "--tasks", "gender", "--runs-dir", str(tmp_path), "--checkpoint", "",
            "--checkpoint-every", "50"]
    assert runs.cli(argv) == 130
    folder = runs.parse_config(argv).run_dir
    assert capsys.readouterr().err == (f"\ntrain: interrupted; the same command resumes {folder} from its last "
                                       "checkpoint (last.pt, written every 50 steps and at each epoch's end)\n")


def test_a_second_train_on_a_folder_being_written_is_refused(prepared, tmp_path, monkeypatch, capsys):
    """Two processes on one folder would both write last.pt: the second gets one line and writes nothing. The
    lock is flock's, so a holder killed with kill -9 leaves an unlocked file that the next run takes."""
    import fcntl

    from replication import distributed

    argv = _train_argv(prepared, tmp_path / "runs")
    cfg = runs.parse_config(argv)
    lock = tmp_path / "runs" / f".{cfg.name}.lock"
    lock.parent.mkdir()
    with open(lock, "a") as held:  # as another `train` holds it
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert runs.cli(argv) == 2
        assert capsys.readouterr().err == (
            f"train: error: another process is writing {cfg.run_dir} now ({lock} is locked); once it has finished, "
            f"the same command reuses or resumes its run; or write this run elsewhere: another --runs-dir (train "
            f"and reproduce) or --run-name (train)\n")
    assert not cfg.run_dir.exists()
    real_fit = engine.Trainer.fit

    def fit_while_locked(self):
        with open(lock) as other, pytest.raises(BlockingIOError):  # held while the run is written
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        real_fit(self)

    monkeypatch.setattr(engine.Trainer, "fit", fit_while_locked)
    assert runs.cli(argv) == 0  # the file the killed holder left is taken, then removed
    assert sorted(p.name for p in lock.parent.iterdir()) == [cfg.name] and (cfg.run_dir / "DONE").exists()
    # under torchrun only rank 0 writes, and locks
    with runs._writing(cfg, distributed.Dist(rank=1, world_size=2)):
        assert not lock.exists()
    # a holder lets go by deleting its file: a lock won on that deleted file excludes no one from the new file a
    # third process may have made in between, so the lock is taken again on that one
    real_flock, swapped = fcntl.flock, []

    def flock_after_a_swap(file, operation):
        if not swapped:
            (lock.parent / "new").write_text("")
            os.replace(lock.parent / "new", lock)
            swapped.append(True)
        real_flock(file, operation)

    monkeypatch.setattr(fcntl, "flock", flock_after_a_swap)
    lock.write_text("")
    with runs._writing(cfg, distributed.Dist()):
        with open(lock) as other, pytest.raises(BlockingIOError):
            real_flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    assert swapped and not lock.exists()


def test_uw_log_variances_stay_out_of_weight_decay(prepared, tmp_path):
    trainer = engine.Trainer(_cfg(prepared, tmp_path, lr_head=1e-3, lr_backbone=1e-5))
    groups = {g["name"]: g for g in trainer.optimizer.param_groups}
    assert groups["uncertainty_weighting"]["weight_decay"] == 0.0
    assert groups["uncertainty_weighting"]["lr"] == 1e-3  # the heads' rate, not the backbone's
    assert groups["uncertainty_weighting"]["params"] == [trainer.weighting.log_vars]
    assert all(g["weight_decay"] == 0.01 for name, g in groups.items() if name != "uncertainty_weighting")
    # every trainable parameter is optimised exactly once
    params = [p for g in groups.values() for p in g["params"]]
    trainable = [p for p in trainer.model.parameters() if p.requires_grad] + [trainer.weighting.log_vars]
    assert len(params) == len({id(p) for p in params}) and {id(p) for p in params} == {id(p) for p in trainable}


class _Heads(torch.nn.Module):
    """An Objective's model without an encoder: one linear head per task on 5 input features."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.heads = torch.nn.ModuleDict({"age": torch.nn.Linear(5, 9), "gender": torch.nn.Linear(5, 2),
                                          "emotion": torch.nn.Linear(5, 7)})

    def forward(self, x):
        return {t: head(x) for t, head in self.heads.items()}


_X = torch.randn(8, 5, generator=torch.Generator().manual_seed(1))
# (age, gender, emotion) of 8 rows: age labelled in 5, gender in 2, emotion in 3; and a batch without emotion labels
_LABELS_ALL = [[3, -1, -1], [0, 1, -1], [8, -1, -1], [5, 0, -1], [1, -1, -1], [-1, -1, 6], [-1, -1, 2], [-1, -1, 0]]
_LABELS_NO_EMOTION = [[3, -1, -1], [0, 1, -1], [8, -1, -1], [5, 0, -1], [1, -1, -1], [2, -1, -1], [-1, 1, -1],
                      [7, -1, -1]]


def _ce(logits, y):
    """float64 hand computation of -log softmax(logits)[y]."""
    logits = [float(v) for v in logits.detach()]
    m = max(logits)
    return -(logits[y] - m - math.log(sum(math.exp(v - m) for v in logits)))


def _masked_means(logits, labels):
    """§3.7.1 by hand: per task, the mean cross-entropy over the rows labelled for it (0 without any)."""
    out = {}
    for i, t in enumerate(TASKS):
        rows = [r for r, row in enumerate(labels) if row[i] != -1]
        out[t] = sum(_ce(logits[t][r], labels[r][i]) for r in rows) / len(rows) if rows else 0.0
    return out


def test_a_task_s_loss_is_the_mean_over_its_labelled_rows_only():
    """§3.7.1 in one process: of 8 rows, age is labelled in 5, gender in 2 and emotion in 3; each task's loss is
    the mean cross-entropy over its own labelled rows (not over the 8 rows, nor over all 10 labels), and so is
    its gradient (s = 0: every uncertainty weight is 1)."""
    objective = engine.Objective(_Heads(), make_weighting("uw", tuple(TASKS)), cached=False)
    total, losses = objective(_X, torch.tensor(_LABELS_ALL))
    logits = objective.model(_X)
    expected = _masked_means(logits, _LABELS_ALL)
    for t in TASKS:
        assert abs(losses[t].item() - expected[t]) < 1e-6, t
    assert abs(total.item() - sum(expected.values())) < 1e-5
    total.backward()
    # d/dW of the mean over the n labelled rows r: sum_r (softmax(z_r) - onehot(y_r)) x_r^T / n
    for i, t in enumerate(TASKS):
        rows = [r for r, row in enumerate(_LABELS_ALL) if row[i] != -1]
        z = logits[t][rows].detach().double()
        y = torch.tensor([_LABELS_ALL[r][i] for r in rows])
        delta = torch.softmax(z, 1) - torch.nn.functional.one_hot(y, z.shape[1]).double()
        head = objective.model.heads[t]
        torch.testing.assert_close(head.weight.grad.double(), delta.T @ _X[rows].double() / len(rows),
                                   rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(head.bias.grad.double(), delta.sum(0) / len(rows), rtol=1e-5, atol=1e-7)


def test_uw_leaves_a_task_without_labels_in_the_batch_out_of_the_loss():
    """§3.7.3 through the engine's Objective in one process: a batch without any emotion label adds neither
    e^{-s} L nor s / 2 for emotion to the uncertainty-weighted loss, so s_emotion gets no gradient (and its
    AdamW step, without weight decay, leaves it as it was); age and gender keep both terms."""
    objective = engine.Objective(_Heads(), make_weighting("uw", tuple(TASKS)), cached=False)
    s = [0.3, -0.2, 0.5]
    with torch.no_grad():
        objective.weighting.log_vars.copy_(torch.tensor(s))
    total, losses = objective(_X, torch.tensor(_LABELS_NO_EMOTION))
    L = _masked_means(objective.model(_X), _LABELS_NO_EMOTION)
    assert losses["emotion"].item() == 0.0 and L["emotion"] == 0.0
    expected = sum(math.exp(-s[i]) * L[t] + s[i] / 2 for i, t in enumerate(("age", "gender")))
    assert abs(total.item() - expected) < 1e-6
    total.backward()
    grad = objective.weighting.log_vars.grad
    for i, t in enumerate(("age", "gender")):  # d/ds (e^{-s} L + s/2) = -e^{-s} L + 1/2
        assert abs(grad[i].item() - (-math.exp(-s[i]) * L[t] + 0.5)) < 1e-6, t
    assert grad[2].item() == 0.0
    assert not any(p.grad.any() for p in objective.model.heads["emotion"].parameters())
    optimizer = torch.optim.AdamW([objective.weighting.log_vars], lr=0.1, weight_decay=0.0)
    optimizer.step()
    assert objective.weighting.log_vars[2].item() == 0.5
    assert objective.weighting.log_vars[0].item() != 0.3


def test_the_lr_schedule_floors_each_group_at_0_009_of_its_starting_rate(prepared, tmp_path):
    """ReduceLROnPlateau (factor 0.1, patience 5, §3.1) with the thesis's code's floor: 30 epochs without
    improvement take each group from its rate to 0.009 x it (two cuts of 10x, then the floor), no lower."""
    trainer = engine.Trainer(_cfg(prepared, tmp_path, lr_head=1e-4, lr_backbone=1e-5))
    start = [g["lr"] for g in trainer.optimizer.param_groups]
    lrs = []
    for _ in range(30):
        trainer.scheduler.step(0.5)  # the multi-task monitor (average accuracy) never improves
        lrs.append(trainer.optimizer.param_groups[0]["lr"])
    # the first epoch sets the best value; the 6th epoch after it without improvement cuts the rate
    assert lrs[5:7] == pytest.approx([start[0], 0.1 * start[0]])
    assert lrs[11:13] == pytest.approx([0.1 * start[0], 0.01 * start[0]])
    assert [g["lr"] for g in trainer.optimizer.param_groups] == pytest.approx([0.009 * lr for lr in start])
    assert sorted(set(start)) == [1e-5, 1e-4]


def test_single_task_selects_on_accuracy_and_stops_on_loss(prepared, tmp_path, capsys):
    cfg = _cfg(prepared, tmp_path, tasks=("gender",), weighting="none", max_epochs=4, patience=1, lr_head=1.0,
               lr_backbone=1.0)
    result = load_run(run(cfg))
    epochs = result.epochs
    losses = [e["val_loss"]["gender"] for e in epochs]
    # each epoch's line shows the quantity early stopping watches and its count against the patience
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch ")]
    assert len(lines) == len(epochs)
    for line, e, bad in zip(lines, epochs, [0] + [int(x >= min(losses[:i + 1])) for i, x in enumerate(losses[1:])]):
        assert f"| val loss gender {e['val_loss']['gender']:.4f} |" in line
        assert line.endswith(f"| val loss: {bad}/1 epochs without improvement")
    # §3.1 early stopping on validation loss: stop one epoch after the loss fails to improve
    stopped = len(epochs) < 4
    if stopped:
        assert losses[-1] >= min(losses[:-1])
    accs = [e["val_accuracy"]["gender"] for e in epochs]
    assert result.results["best_epoch"] == 1 + accs.index(max(accs))  # §4.1: best validation accuracy
    assert set(result.results["tasks"]) == {"gender"} and "overall_average_accuracy" not in result.results
    with pytest.raises(ValueError, match="single-task"):
        TrainConfig(method="lp", tasks=("age",), weighting="uw")


def _scripted_epoch_ends(trainer, monkeypatch, records, batches=()):
    """Runs ``trainer._end_epoch`` once per scripted validation result (validation_metrics' dict; the model's
    validation pass is skipped), each epoch after ``_observe`` of ``batches(epoch)``, a list of (losses,
    targets); returns per epoch (best epoch, epochs without improvement, finished, learning rate of group 0)."""
    monkeypatch.setattr(engine, "predict_logits", lambda *args, **kwargs: None)
    trainer.dir.mkdir(parents=True, exist_ok=True)
    out = []
    for epoch, record in enumerate(records):
        for losses, targets in (batches(epoch) if batches else ()):
            trainer._observe({t: torch.tensor(v) for t, v in losses.items()}, torch.tensor(targets))
        monkeypatch.setattr(engine, "validation_metrics", lambda *args, record=record: record)
        trainer._end_epoch(None, 0.0)
        p = trainer.progress
        out.append((p.best_epoch, p.bad_epochs, p.finished, trainer.optimizer.param_groups[0]["lr"]))
    return out


def test_multi_task_selects_and_stops_on_the_average_validation_accuracy(prepared, tmp_path, monkeypatch):
    """§4.1: the checkpoint of the highest average validation accuracy, the first epoch that reached it; §3.1:
    stop after `patience` epochs without improvement (a tie is none), the count starting again at each
    improvement; the LR schedule watches the same accuracy as a maximum (never cut while it improves).
    Train losses of metrics.jsonl: per task, the mean of this epoch's batch losses over the batches that
    hold a label of the task."""
    trainer = engine.Trainer(_cfg(prepared, tmp_path, patience=3, max_epochs=20))
    lr = trainer.optimizer.param_groups[0]["lr"]
    accs = [0.5, 0.6, 0.6, 0.55, 0.7, 0.7, 0.7, 0.7]
    records = [{"val_loss": {t: 1.0 for t in TASKS}, "val_accuracy": {t: a for t in TASKS},
                "val_average_accuracy": a} for a in accs]

    def batches(epoch):  # the first batch has no emotion label (its loss is then an exact 0)
        return [({"age": 1.0 + epoch, "gender": 2.0, "emotion": 0.0}, [[1, 0, -1], [2, 1, -1]]),
                ({"age": 3.0 + epoch, "gender": 4.0, "emotion": 5.0 + epoch}, [[3, -1, 2], [4, 0, -1]])]

    out = _scripted_epoch_ends(trainer, monkeypatch, records, batches)
    assert [o[0] for o in out] == [1, 2, 2, 2, 5, 5, 5, 5]
    assert [o[1] for o in out] == [0, 0, 1, 2, 0, 1, 2, 3]
    assert [o[2] for o in out] == [False] * 7 + [True]
    assert [o[3] for o in out] == [lr] * 8
    history = trainer.progress.history
    assert [h["train_loss"] for h in history] == [{"age": 2.0 + e, "gender": 3.0, "emotion": 5.0 + e}
                                                  for e in range(8)]
    assert [h["best_epoch"] for h in history] == [1, 2, 2, 2, 5, 5, 5, 5]


def test_single_task_selects_on_accuracy_stops_and_cuts_the_lr_on_loss(prepared, tmp_path, monkeypatch):
    """Single-task: §4.1 selects the highest validation accuracy, §3.1 stops after `patience` epochs without a
    lower validation loss, and ReduceLROnPlateau (factor 0.1, patience 5) watches that loss: it cuts the rate
    at the 6th epoch after the last lower one, not while the loss still falls (whatever the accuracy does)."""
    trainer = engine.Trainer(_cfg(prepared, tmp_path, tasks=("gender",), weighting="none", patience=6,
                                  max_epochs=20))
    lr = trainer.optimizer.param_groups[0]["lr"]
    losses = [1.0, 0.9, 0.8, 0.7, 0.7, 0.75, 0.7, 0.8, 0.7, 0.9]
    accs = [0.5, 0.5, 0.5, 0.5, 0.5, 0.6, 0.5, 0.5, 0.5, 0.5]
    records = [{"val_loss": {"gender": x}, "val_accuracy": {"gender": a}, "val_average_accuracy": a}
               for x, a in zip(losses, accs)]
    out = _scripted_epoch_ends(trainer, monkeypatch, records)
    assert [o[0] for o in out] == [1, 1, 1, 1, 1, 6, 6, 6, 6, 6]
    assert [o[1] for o in out] == [0, 0, 0, 0, 1, 2, 3, 4, 5, 6]
    assert [o[2] for o in out] == [False] * 9 + [True]
    assert [o[3] for o in out] == pytest.approx([lr] * 9 + [0.1 * lr])


def test_ema_weights_of_an_epoch_are_the_inverse_ema_losses_at_the_previous_epoch_end(prepared, tmp_path,
                                                                                      monkeypatch):
    """§3.7.3 EMA weighting inside the training loop: lambda_k = 1 / L~_k, frozen at each epoch's start from the
    EMA of the previous epoch (as metrics.jsonl logs it); the first epoch is the plain sum. The EMA logged at each
    epoch's end is the hand recursion over every step's task losses so far (beta = 0.95, started at the first
    observation), a step whose batch has no label of a task skipped for it; the train loss, the epoch's mean
    over the batches that hold a label of the task."""
    steps, real = [], engine.train_step

    def spy(objective, optimizer, scaler, inputs, targets, autocast):
        losses = real(objective, optimizer, scaler, inputs, targets, autocast)
        steps.append(({t: float(v) for t, v in losses.items()}, (targets != -1).any(0).tolist()))
        return losses

    monkeypatch.setattr(engine, "train_step", spy)
    trainer = engine.Trainer(_cfg(prepared, tmp_path, weighting="ema", max_epochs=3))
    trainer.fit()
    epochs = trainer.progress.history
    assert epochs[0]["task_weights"] == {t: 1.0 for t in TASKS}
    for before, after in zip(epochs, epochs[1:]):
        assert after["task_weights"] == pytest.approx({t: 1 / before["ema_losses"][t] for t in TASKS}, rel=1e-12)
    n = trainer.steps_per_epoch
    assert len(steps) == 3 * n and not all(all(present) for _, present in steps)  # a batch without some task
    ema = {}
    for e, record in enumerate(epochs):
        seen = {}
        for losses, present in steps[e * n:(e + 1) * n]:
            for t, there in zip(TASKS, present):
                if there:
                    ema[t] = 0.95 * ema[t] + 0.05 * losses[t] if t in ema else losses[t]
                    seen.setdefault(t, []).append(losses[t])
        assert record["ema_losses"] == pytest.approx(ema, rel=1e-12), e
        assert record["train_loss"] == pytest.approx({t: sum(v) / len(v) for t, v in seen.items()}, rel=1e-12), e


def test_ema_skips_a_task_without_labels_in_a_step_s_batch(prepared, tmp_path):
    """§3.7.3 EMA through the engine's step in one process: a step whose batch holds no emotion label is no
    observation of the emotion loss (its masked loss is an exact 0), so emotion's running loss, its train loss and
    the weight frozen from it at the next epoch start stay those of the step before; age and gender, labelled in
    some rows of either batch, are observed both times (beta = 0.95, the first observation as the start)."""
    trainer = engine.Trainer(_cfg(prepared, tmp_path, method="lp", weighting="ema"))
    images = torch.randn(8, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    observed = []
    for labels in (_LABELS_ALL, _LABELS_NO_EMOTION):
        targets = torch.tensor(labels)
        losses = engine.train_step(trainer.objective, trainer.optimizer, trainer.scaler, images, targets,
                                   trainer.autocast)
        trainer._observe(losses, targets)
        observed.append({t: float(v) for t, v in losses.items()})
    first, second = observed
    assert second["emotion"] == 0.0 and first["emotion"] > 0
    ema = trainer.weighting.log()["ema_losses"]
    assert ema["emotion"] == first["emotion"]
    for t in ("age", "gender"):
        assert ema[t] == pytest.approx(0.95 * first[t] + 0.05 * second[t], rel=1e-12), t
    assert trainer.progress.loss_sums == {"age": [first["age"] + second["age"], 2],
                                          "gender": [first["gender"] + second["gender"], 2],
                                          "emotion": [first["emotion"], 1]}
    trainer.weighting.start_epoch()
    assert trainer.weighting.log()["task_weights"] == pytest.approx({t: 1 / ema[t] for t in TASKS}, rel=1e-12)


def test_every_module_trains_in_training_mode(prepared, tmp_path, monkeypatch):
    """The encoder is built in eval mode (checkpoint.load_vision): fit must switch the whole model to training
    mode from the first step on (LoRA dropout and activation checkpointing act in training mode only), and
    back after each validation."""
    modes, real = [], engine.train_step

    def spy(objective, *args):
        modes.append(all(m.training for m in objective.modules()))
        return real(objective, *args)

    monkeypatch.setattr(engine, "train_step", spy)
    engine.Trainer(_cfg(prepared, tmp_path, method="lora", max_epochs=2)).fit()
    assert len(modes) == 2 * 7 and all(modes)


def test_predictions_are_eval_mode_outputs_without_autograd(prepared, tmp_path):
    """predict_logits: the model's outputs in eval mode (dropout off), with no autograd graph kept (one per
    batch would hold every activation of the whole split), and the model back in training mode after."""
    trainer = engine.Trainer(_cfg(prepared, tmp_path, method="lora"))
    trainer.model.train()
    logits = engine.predict_logits(trainer.model, trainer.val_images, trainer.cfg, trainer.d)
    assert trainer.model.training and not any(v.requires_grad for v in logits.values())
    images = torch.stack([trainer.val_images[i][0] for i in range(len(trainer.val_images))])
    with torch.no_grad():
        expected = trainer.model.eval()(images)
    for t in TASKS:
        torch.testing.assert_close(logits[t], expected[t])


def test_a_resumed_run_keeps_the_lr_schedule_s_count(prepared, tmp_path):
    """last.pt carries ReduceLROnPlateau's state: a run resumed after 2 epochs without a lower validation loss
    cuts the rate 4 epochs later, as the uninterrupted run does, not 6."""
    cfg = _cfg(prepared, tmp_path, tasks=("gender",), weighting="none")
    trainer = engine.Trainer(cfg)
    trainer.dir.mkdir(parents=True)
    for loss in (1.0, 1.1, 1.2):
        trainer.scheduler.step(loss)
    trainer._save_last()
    resumed = engine.Trainer(cfg)
    assert resumed._load_last()
    assert resumed.scheduler.best == 1.0 and resumed.scheduler.num_bad_epochs == 2


def test_lp_cache_batches_are_the_sampler_s_and_resume_at_their_step(prepared, tmp_path):
    """The cached LP path draws the rows the image loader would (same labels, batch by batch), and a run resumed
    at step 3 of an epoch gets that epoch's remaining 4 batches, not all 7 again."""
    trainer = engine.Trainer(_cfg(prepared, tmp_path, method="lp", cache_embeddings=True))
    cache, _ = trainer._cache()
    whole = list(trainer._batches(cache))
    assert len(whole) == trainer.steps_per_epoch == 7
    assert [y.tolist() for _, y in whole] == [y.tolist() for _, y in trainer._batches(None)]
    trainer.progress.step = 3
    rest = list(trainer._batches(cache))
    assert len(rest) == 4
    for (xa, ya), (xb, yb) in zip(whole[3:], rest):
        assert torch.equal(ya, yb) and all(torch.equal(xa[t], xb[t]) for t in xa)


def test_amp_modes_autocast_to_their_precision():
    """--amp fp16 computes the matrix products in float16 (with the GradScaler, §3.1), bf16 in bfloat16,
    none in float32."""
    for amp, dtype in (("fp16", torch.float16), ("bf16", torch.bfloat16), ("none", torch.float32)):
        cfg = TrainConfig(method="lp", tasks=("age",), weighting="none", amp=amp)
        with engine._autocast(cfg, torch.device("cpu")):
            assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == dtype, amp


def test_a_max_train_samples_above_the_training_rows_is_noted(prepared, tmp_path, capsys):
    """It was capped without a word, the run folder still named n<N>. The fixture has 36 training rows with a
    gender label."""
    for samples, note in ((1000, "note: --max-train-samples 1000 exceeds the 36 training rows labelled for gender: "
                                 "all 36 are used\n"), (36, "")):
        trainer = engine.Trainer(_cfg(prepared, tmp_path, method="lp", tasks=("gender",), weighting="none",
                                      max_train_samples=samples))
        assert len(trainer.train_set.frame) == 36 and capsys.readouterr().err == note


def test_subsampled_training_rows_are_distinct(prepared):
    """--max-train-samples N keeps N different rows of the split (no row twice), in manifest order."""
    frame = pd.DataFrame({"path": [f"{i}.jpg" for i in range(20)], "age": [i % 9 for i in range(20)],
                          "gender": [i % 2 for i in range(20)], "emotion": -1})
    for seed in range(5):
        cfg = TrainConfig(method="lp", tasks=("age",), weighting="none", max_train_samples=12, seed=seed)
        kept = engine.TrainingSet(cfg, frame).frame["path"].tolist()
        assert len(kept) == len(set(kept)) == 12 and set(kept) <= set(frame["path"])
        assert kept == sorted(kept, key=lambda p: int(p.split(".")[0]))


def test_predictions_keep_each_task_s_own_test_sets():
    """predictions.csv: a task's rows are its labelled rows on its test sets (labels.TEST_SETS); a RAF-DB image
    with a gender label is an emotion test image only."""
    frame = pd.DataFrame({"path": ["u.jpg", "r1.jpg", "r2.jpg"], "dataset": ["utkface", "rafdb", "rafdb"],
                          "age": [3, -1, -1], "gender": [1, 0, -1], "emotion": [-1, 3, 2]})
    logits = {"gender": torch.tensor([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0]]),
              "emotion": torch.nn.functional.one_hot(torch.tensor([0, 3, 1]), 7).float()}
    table = engine.predictions_table(logits, frame, ("gender", "emotion"))
    assert table.to_dict("records") == [
        {"path": "u.jpg", "dataset": "utkface", "task": "gender", "label": 1, "pred": 1},
        {"path": "r1.jpg", "dataset": "rafdb", "task": "emotion", "label": 3, "pred": 3},
        {"path": "r2.jpg", "dataset": "rafdb", "task": "emotion", "label": 2, "pred": 1}]


_KILLER = """
import os, signal, sys
sys.path.insert(0, {tests!r})
from replication import engine, runs
steps = 0
real_step = engine.train_step
def train_step(*args, **kwargs):
    global steps
    steps += 1
    if steps > {kill_after}:
        os.kill(os.getpid(), signal.SIGKILL)   # a real kill -9, mid-epoch
    return real_step(*args, **kwargs)
engine.train_step = train_step
sys.exit(runs.cli(sys.argv[1:]))
"""


def _cli_args(cfg: TrainConfig, device: str = "cpu", amp: str = "none") -> list[str]:
    return ["--method", cfg.method, "--tasks", ",".join(cfg.tasks), "--weighting", cfg.weighting,
            "--prepared", cfg.prepared, "--runs-dir", cfg.runs_dir, "--batch-size", str(cfg.batch_size),
            "--max-epochs", str(cfg.max_epochs), "--lr-head", str(cfg.lr_head), "--lr-backbone",
            str(cfg.lr_backbone), "--seed", str(cfg.seed), "--checkpoint-every", str(cfg.checkpoint_every),
            "--model-config", cfg.model_config, "--amp", amp, "--device", device, "--num-workers", "0",
            "--patience", str(cfg.patience), "--checkpoint", ""]


def _run_cli(cfg, kill_after, **device_and_amp):
    script = _KILLER.format(tests=str(Path(__file__).parent), kill_after=kill_after)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", script, *_cli_args(cfg, **device_and_amp)], env=env,
                          capture_output=True, text=True, timeout=300)


def test_kill9_mid_epoch_then_resume_is_bit_identical(prepared, tmp_path):
    """Must-show: a multi-task run killed with SIGKILL mid-epoch and resumed ends exactly like an
    uninterrupted run with the same seed (metrics, selected and last weights, predictions). EMA weighting,
    whose state (moving averages, frozen epoch weights) must survive the kill as well."""
    weighting = "ema"
    cfg = _cfg(prepared, tmp_path / "a", method="lora", weighting=weighting, max_epochs=3)
    done = _run_cli(cfg, kill_after=10**9)
    assert done.returncode == 0, done.stderr
    killed_cfg = _cfg(prepared, tmp_path / "b", method="lora", weighting=weighting, max_epochs=3)
    # 36 rows without emotion + 12 emotion rows replicated twice (§3.7.2) = 60 draws = 7 batches of 8
    first = _run_cli(killed_cfg, kill_after=7 + 5)  # in epoch 2, after its step-4 checkpoint
    assert first.returncode == -signal.SIGKILL
    state = torch.load(killed_cfg.run_dir / "last.pt", weights_only=False)
    assert state["progress"]["epoch"] == 1 and state["progress"]["step"] == 4  # resumes mid-epoch
    assert not (killed_cfg.run_dir / "DONE").exists()
    second = _run_cli(killed_cfg, kill_after=10**9)
    assert second.returncode == 0, second.stderr
    assert "resuming" in second.stdout
    a, b = load_run(cfg.run_dir), load_run(killed_cfg.run_dir)
    strip = lambda epochs: [{k: v for k, v in e.items() if k != "train_seconds"} for e in epochs]  # noqa: E731
    assert strip(a.epochs) == strip(b.epochs)
    assert a.results == b.results
    pd.testing.assert_frame_equal(a.predictions, b.predictions)
    for name in ("best.pt", "last.pt"):
        sa = torch.load(cfg.run_dir / name, weights_only=False)["model"]
        sb = torch.load(killed_cfg.run_dir / name, weights_only=False)["model"]
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_last_pt_is_read_onto_the_cpu_whatever_the_run_s_device(prepared, tmp_path):
    """A GPU run's resume: torch.set_rng_state takes only a CPU tensor, so last.pt mapped onto the run's
    device failed there (CI has no GPU: the meta device stands in for cuda, which fails the same way)."""
    cfg = _cfg(prepared, tmp_path, max_epochs=1)
    engine.Trainer(cfg).fit()
    resumed = engine.Trainer(cfg)
    resumed.d = replace(resumed.d, device=torch.device("meta"))
    assert resumed._load_last() and resumed.progress.epoch == 1
    saved = torch.load(cfg.run_dir / "last.pt", weights_only=False)["rng"][0]["torch"]
    assert torch.equal(torch.get_rng_state(), saved)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (benchmarks/gpu.sh's cuda-tests step)")
def test_a_cuda_fp16_run_killed_mid_epoch_resumes_and_finishes(prepared, tmp_path):
    """The full profile's device and precision: a run killed with SIGKILL mid-epoch resumes from last.pt (its
    CUDA generator state included) and finishes. Not compared bit for bit: CUDA kernels need not be
    deterministic between two runs."""
    cfg = _cfg(prepared, tmp_path, method="dora", max_epochs=3)
    first = _run_cli(cfg, kill_after=7 + 5, device="cuda", amp="fp16")
    assert first.returncode == -signal.SIGKILL, first.stderr
    assert torch.load(cfg.run_dir / "last.pt", weights_only=False)["rng"][0]["cuda"].device.type == "cpu"
    second = _run_cli(cfg, kill_after=10**9, device="cuda", amp="fp16")
    assert second.returncode == 0, second.stderr
    assert "resuming" in second.stdout and len(load_run(cfg.run_dir).epochs) == 3


@pytest.mark.parametrize("killed_in", ["_write_metrics", "_save_last", "_commit_best"])
def test_a_run_killed_between_its_epoch_end_files_resumes_to_the_same_run(prepared, tmp_path, monkeypatch,
                                                                         killed_in):
    """The last epoch end writes metrics.jsonl, last.pt and best.pt in turn; a run killed in any of them
    resumes to the uninterrupted run's files: all epochs in metrics.jsonl, best.pt of the epoch last.pt and
    results.json name (a finished last.pt written before metrics.jsonl used to leave its last epoch out)."""
    baseline = load_run(run(_cfg(prepared, tmp_path / "a", checkpoint_every=100)))
    cfg = _cfg(prepared, tmp_path / "b", checkpoint_every=100)
    real = getattr(engine.Trainer, killed_in)

    def killed(self):
        if self.progress.finished:
            raise KeyboardInterrupt(killed_in)
        real(self)

    monkeypatch.setattr(engine.Trainer, killed_in, killed)
    with pytest.raises(KeyboardInterrupt):
        run(cfg)
    monkeypatch.setattr(engine.Trainer, killed_in, real)
    (cfg.run_dir / "best-next-epoch7.pt").write_bytes(b"")  # a leftover no last.pt records is dropped
    result = load_run(run(cfg))
    strip = lambda epochs: [{k: v for k, v in e.items() if k != "train_seconds"} for e in epochs]  # noqa: E731
    assert strip(result.epochs) == strip(baseline.epochs) and len(result.epochs) == 2
    assert result.results == baseline.results
    best_epoch = torch.load(cfg.run_dir / "best.pt", weights_only=False)["epoch"]
    assert best_epoch == result.results["best_epoch"] == result.epochs[-1]["best_epoch"]
    assert list(cfg.run_dir.glob("best-next-*")) == []


@pytest.mark.parametrize("amp", ["fp16", "none"])
def test_a_non_finite_batch_loss_is_counted_or_stops_the_run(prepared, tmp_path, monkeypatch, amp):
    """fp16: GradScaler skips the step of a batch whose loss overflowed; that batch must not reach the §3.7.3
    EMA (one NaN there makes every later weight NaN) and is counted per task. Without a scaler nothing
    skipped the step, so the weights are broken: the run stops with an error."""
    cfg = _cfg(prepared, tmp_path, method="lora", weighting="ema", amp=amp)
    real, calls = engine.train_step, []

    def third_batch_nan(objective, optimizer, scaler, inputs, targets, autocast):
        calls.append(targets)
        if len(calls) == 3:
            inputs = torch.full_like(inputs, float("nan"))
        return real(objective, optimizer, scaler, inputs, targets, autocast)

    monkeypatch.setattr(engine, "train_step", third_batch_nan)
    if amp == "none":
        with pytest.raises(FloatingPointError, match=r"non-finite .*loss at epoch 1, step 3 \(none\)"):
            run(cfg)
        return
    epochs = load_run(run(cfg)).epochs
    labelled = {t for i, t in enumerate(cfg.tasks) if (calls[2][:, i] >= 0).any()}
    assert labelled and epochs[0]["nonfinite_batches"] == {t: 1 for t in labelled}
    assert epochs[1]["nonfinite_batches"] == {}
    for e in epochs:
        assert np.isfinite([*e["ema_losses"].values(), *e["task_weights"].values()]).all(), e
    weights = torch.load(cfg.run_dir / "last.pt", weights_only=False)["model"]
    assert all(torch.isfinite(v).all() for v in weights.values())


def test_runs_are_repeatable_whatever_the_workers_and_gradient_checkpointing(prepared, tmp_path):
    """Seeds fix a run: DataLoader workers (augmentation seeds come from the sampler) and gradient
    checkpointing (recomputation restores the dropout RNG) leave every number unchanged."""
    a = load_run(run(_cfg(prepared, tmp_path / "a", method="lora", max_epochs=1)))
    b = load_run(run(_cfg(prepared, tmp_path / "b", method="lora", max_epochs=1, num_workers=2,
                          checkpoint_blocks=2)))
    assert [e["train_loss"] for e in a.epochs] == [e["train_loss"] for e in b.epochs]
    assert a.results == b.results
    sa, sb = (torch.load(tmp_path / x / a.config.name / "best.pt", weights_only=False)["model"] for x in "ab")
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_lp_trains_on_augmented_images_unless_asked_to_cache(prepared, tmp_path):
    """§3.1: every method's samples go through Listing 3.1's random transformations, LP's too."""
    trainer = engine.Trainer(_cfg(prepared, tmp_path, method="lp"))
    assert not trainer.cached
    images, _ = next(trainer._batches(None))  # the training loader's images, not cached embeddings
    assert images.shape == (8, 3, 64, 64)
    # the first image is the first draw's crop through Listing 3.1 under the draw's own seed, not the plain
    # evaluation resize
    from replication.transforms import eval_transform, train_transform

    indices, seeds = trainer.sampler.draws()
    row = int(trainer.train_set.rows[int(indices[0])])
    with Image.open(Path(prepared) / trainer.train_set.frame["path"][row]) as image:
        image = image.convert("RGB")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seeds[0]))
        augmented = train_transform(64)(image)
    torch.testing.assert_close(images[0], augmented)
    assert (images[0] - eval_transform(64)(image)).abs().max() > 0.1


def test_lp_embeddings_are_computed_once(prepared, tmp_path, monkeypatch):
    from replication.methods import TaskModel

    embedded = []
    real_embed = TaskModel.embed
    monkeypatch.setattr(TaskModel, "embed", lambda self, x: embedded.append(len(x)) or real_embed(self, x))
    trainer = engine.Trainer(_cfg(prepared, tmp_path, method="lp", max_epochs=3, cache_embeddings=True))
    trainer.fit()
    # the frozen backbone ran once over the 48 train rows (not the replicated draws) and the 12 val rows;
    # the 3 epochs of 7 steps and 3 validations ran the heads only
    assert trainer.cached and sum(embedded) == 48 + 12
    epochs = [json.loads(line) for line in (trainer.dir / "metrics.jsonl").read_text().splitlines()]
    assert len(epochs) == 3 and epochs[0]["train_loss"] != epochs[2]["train_loss"]
    # what is cached, row for row: the frozen encoder's eval-mode embeddings of each crop's plain evaluation resize
    # (the speed option leaves out §3.1's augmentation), for the training rows and the validation rows alike
    train, val = trainer._cache()
    for cache, frame in ((train, trainer.train_set.frame), (val, trainer.val_frame)):
        rows = [0, 1, len(frame) - 1]
        images = torch.stack([engine.eval_transform(64)(Image.open(prepared / frame["path"][r]).convert("RGB"))
                              for r in rows])
        with torch.no_grad():
            expected = trainer.model.eval().embed(images)
        for t in TASKS:
            torch.testing.assert_close(cache[t][rows], expected[t])


def test_zero_shot_run_writes_predictions_without_training(prepared, tmp_path, monkeypatch):
    from replication.tokenizer import train_bpe
    from replication.zero_shot import PROMPTS

    bpe = tmp_path / "bpe.txt"
    train_bpe([p for ps in PROMPTS.values() for p in ps], 50, bpe)
    cfg = TrainConfig(method="zero_shot", tasks=("age", "gender", "emotion"), weighting="uw", prepared=str(prepared),
                      runs_dir=str(tmp_path / "runs"), batch_size=16, bpe=str(bpe))
    result = load_run(run(cfg))
    assert result.epochs == [] and not (cfg.run_dir / "best.pt").exists()
    assert len(result.predictions) == 8 * 3 * 2 + 8
    assert 0 <= result.results["overall_average_accuracy"] <= 1
    # the baseline is shared by batches with other training settings (its name leaves them out), not refused
    monkeypatch.setattr(runs, "_test", None)
    assert run(replace(cfg, max_train_samples=5, seed=7, max_epochs=3, batch_size=4, lr_head=1.0)) == cfg.run_dir
    with pytest.raises(ValueError, match="different config"):  # what it predicts with still counts
        run(replace(cfg, amp="bf16"))


def test_train_command_reports_an_unusable_merges_file_in_one_line(prepared, tmp_path, capsys):
    """A merges file cut short, in another encoding, or without merges ended the zero-shot baseline in gzip's
    EOFError, a UnicodeDecodeError or a ValueError traceback; now one line names the file, and no folder is made."""
    import gzip

    whole = gzip.compress(b"#version: 0.2\n" + b"a b\n" * 5000)
    for name, content, what in (("cut.txt.gz", whole[:len(whole) // 2], "not a merges file (EOFError: "),
                                ("utf16.txt", "#version: 0.2\na b\n".encode("utf-16"),
                                 "not a merges file (UnicodeDecodeError: "),
                                ("header.txt", b"#version: 0.2\n", "no BPE merges after the header line")):
        (tmp_path / name).write_bytes(content)
        assert runs.cli(["--method", "zero_shot", "--tasks", "gender", "--prepared", str(prepared), "--runs-dir",
                         str(tmp_path / "runs"), "--checkpoint", "", "--bpe", str(tmp_path / name)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"train: error: {tmp_path / name}: {what}") and len(err.splitlines()) == 1, err
    assert not (tmp_path / "runs").exists()


def test_a_run_without_test_rows_stops_before_its_folder_is_written(prepared, tmp_path):
    """The test sets are read before config.json: a manifest without any (or with emotion test rows only from
    datasets that are no emotion test set) stops the zero-shot baseline and a trained run before their folders
    exist, instead of after a whole training."""
    from replication.tokenizer import train_bpe
    from replication.zero_shot import PROMPTS

    bpe = tmp_path / "bpe.txt"
    train_bpe([p for ps in PROMPTS.values() for p in ps], 50, bpe)
    frame = pd.read_csv(prepared / "manifest.csv")
    frame["path"] = [str(prepared / p) for p in frame["path"]]  # crops stay where they are
    rafdb_test = (frame["dataset"] == "rafdb") & (frame["split"] == "test")
    for name, manifest, message in (
            ("none", frame[~rafdb_test], "no test rows labelled for ['emotion']"),
            ("other", frame.assign(dataset=frame["dataset"].mask(rafdb_test, "celebahq")),
             "no test rows of ['rafdb'], the test sets of ['emotion']")):
        (tmp_path / name).mkdir()
        manifest.to_csv(tmp_path / name / "manifest.csv", index=False)
        for cfg in (_cfg(tmp_path / name, tmp_path / "runs", tasks=("emotion",), weighting="none"),
                    TrainConfig(method="zero_shot", tasks=("emotion",), weighting="none", prepared=str(tmp_path / name),
                                runs_dir=str(tmp_path / "runs"), bpe=str(bpe))):
            with pytest.raises(ValueError) as err:
                run(cfg)
            assert str(err.value) == f"{tmp_path / name / 'manifest.csv'}: {message}"
    assert not (tmp_path / "runs").exists()


def test_single_task_sampling_weights_average_every_label_a_row_has():
    """§3.2: a row's weight is the mean of the class weights of its available age, emotion and gender labels,
    in a single-task run too (scikit-learn's "balanced" class weights as the oracle)."""
    from sklearn.utils.class_weight import compute_class_weight

    frame = pd.DataFrame({"age": [-1] * 5, "gender": [0, 0, 1, 1, -1], "emotion": [0, 0, 0, 1, 1]})
    weights = engine.TrainingSet(TrainConfig(method="dora", tasks=("emotion",), weighting="none"), frame).weights
    emotion = dict(zip([0, 1], compute_class_weight("balanced", classes=np.array([0, 1]), y=frame["emotion"])))
    gender = dict(zip([0, 1], compute_class_weight("balanced", classes=np.array([0, 1]), y=frame["gender"][:4])))
    expected = [(emotion[e] + gender[g]) / 2 for e, g in zip(frame["emotion"][:4], frame["gender"][:4])]
    np.testing.assert_allclose(weights, expected + [emotion[1]], rtol=1e-12)


def test_emotion_replication_takes_the_configured_share():
    """§3.7.2 replicates the emotion rows of a multi-task run to about a third of the training set; --emotion-share
    changes that third. 4 emotion rows among 16: a half needs 3 copies (12 of 24), a third 2 (8 of 20, nearer
    1/3 than 1 copy's 4 of 16); the oracle tries every whole number of copies."""
    frame = pd.DataFrame({"age": [1] * 12 + [-1] * 4, "gender": [0, 1] * 6 + [-1] * 4,
                          "emotion": [-1] * 12 + [0, 1, 2, 3]})

    def copies(share):
        return min(range(1, 20), key=lambda k: abs(4 * k / (4 * k + 12) - share))

    assert (copies(0.5), copies(1 / 3)) == (3, 2)
    for share in (0.5, 1 / 3):
        cfg = TrainConfig(method="dora", tasks=tuple(TASKS), weighting="uw", emotion_share=share)
        rows = engine.TrainingSet(cfg, frame).rows
        assert np.bincount(rows, minlength=16).tolist() == [1] * 12 + [copies(share)] * 4


def test_validation_accuracy_is_pooled_over_the_validation_datasets():
    """A task's validation accuracy counts every labelled row once, whatever dataset it came from (3 of 4
    right: 0.75, where the mean of the two datasets' accuracies would be 0.5)."""
    frame = pd.DataFrame({"dataset": ["fairface"] * 3 + ["lagenda"], "age": [1, 2, 3, 4], "gender": [0, 1, -1, -1],
                          "emotion": -1})
    logits = {"age": torch.nn.functional.one_hot(torch.tensor([1, 2, 3, 0]), 9).float(),
              "gender": torch.tensor([[2.0, 0.0], [0.0, 2.0], [9.0, 0.0], [9.0, 0.0]])}
    out = engine.validation_metrics(logits, frame, ("age", "gender"))
    assert out["val_accuracy"] == {"age": 0.75, "gender": 1.0} and out["val_average_accuracy"] == 0.875


def test_a_task_without_validation_labels_is_an_error(prepared, tmp_path):
    """§4.1 selection and §3.1 stopping would compare NaN accuracies: stop at once, naming the task."""
    frame = pd.read_csv(prepared / "manifest.csv")
    frame.loc[frame["split"] == "val", "emotion"] = -1
    (tmp_path / "p").mkdir()
    frame.to_csv(tmp_path / "p" / "manifest.csv", index=False)
    with pytest.raises(engine.ManifestError, match=r"no val rows labelled for \['emotion'\]"):
        engine.Trainer(_cfg(tmp_path / "p", tmp_path / "runs"))


def test_an_unreadable_image_is_named_by_its_manifest_path(tmp_path):
    """The error names the crop as manifest.csv lists it (the item number counts within a filtered split)."""
    frame = pd.DataFrame({"path": ["rafdb/ok.jpg", "rafdb/missing.jpg"], "emotion": [1, 2]})
    (tmp_path / "rafdb").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "rafdb" / "ok.jpg")
    data = engine.FaceDataset(tmp_path, frame, ("emotion",), lambda image: image)
    assert data[0][1].tolist() == [1]
    message = (f"cannot read image {tmp_path / 'rafdb' / 'missing.jpg'} (manifest.csv path 'rafdb/missing.jpg'): "
               f"[Errno 2] No such file or directory: '{tmp_path / 'rafdb' / 'missing.jpg'}'")
    with pytest.raises(engine.ManifestError) as err:  # what `train` reports in one line
        data[1]
    assert str(err.value) == message
    # read in a DataLoader worker (the full profile's 8), torch rebuilds it from the worker's traceback text:
    # still the message alone
    loader = torch.utils.data.DataLoader(engine._Rows(data, np.array([1])), num_workers=1,
                                         collate_fn=lambda items: items)
    with pytest.raises(engine.ManifestError) as err:
        next(iter(loader))
    assert str(err.value) == message


def test_crops_of_another_size_than_the_model_takes_are_noted(prepared, tmp_path, capsys):
    """prepare_settings.json's crop side against the model's input: a note on stderr, once, and none when they
    agree (the transforms resize either way; a full-profile run on crops cut for a 224-px model would lose
    detail without a word)."""
    import shutil
    folder = Path(shutil.copytree(prepared, tmp_path / "prepared"))
    cfg = _cfg(folder, tmp_path / "runs", method="lp", tasks=("gender",), weighting="none", max_epochs=1)
    assert runs.crop_size_note(cfg) is None  # no prepare_settings.json (crops made elsewhere): nothing to say
    (folder / "prepare_settings.json").write_text(json.dumps({"size": 64}))
    assert runs.crop_size_note(cfg) is None  # demo-tiny takes 64 px
    (folder / "prepare_settings.json").write_text(json.dumps({"size": 32}))
    run(cfg)
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note:")]
    assert notes == [f"note: the crops in {folder} are 32 px, demo-tiny takes 64 px: every crop is resized "
                     f"(`prepare --size 64` makes crops of the model's size)"]
    # an emptied one was a JSONDecodeError traceback, naming no file
    (folder / "prepare_settings.json").write_text("")
    assert runs.cli(_train_argv(folder, tmp_path / "runs2")) == 2
    assert capsys.readouterr().err == (
        f"train: error: {folder / 'prepare_settings.json'}: the file is empty; expected the JSON object of crop "
        "settings that prepare writes. Delete it and run prepare with the settings its crops were made with "
        "(report.json's options), or prepare into another --out\n")


def test_profiles_hold_the_thesis_settings_and_the_demo_its_cpu_ones():
    """§3.1/§3.7.2: PE-Core-L14-336 at 336 px (SSD crops, §2.7), batch 128, early stopping after 10 epochs, fp16
    AMP, LR 1e-4 heads / 1e-5 backbone; the demo runs on a CPU without autocast. An unknown name is an error,
    and paths given as text become Paths."""
    from replication.profiles import get_profile
    full, demo = get_profile("full"), get_profile("demo")
    assert (full.model_config, full.image_size, full.detector, full.batch_size, full.patience, full.amp,
            full.lr_head, full.lr_backbone) == ("PE-Core-L14-336", 336, "ssd", 128, 10, "fp16", 1e-4, 1e-5)
    assert (demo.model_config, demo.amp, demo.device) == ("demo-tiny", "none", "cpu")
    assert demo.with_paths(prepared="x").prepared == Path("x")
    with pytest.raises(KeyError, match="unknown profile 'thesis'"):
        get_profile("thesis")


def test_reproduce_trains_the_thesis_runs_and_hands_each_its_settings(monkeypatch):
    """§4.3: LP, AP, FT4 and DoRA once per task (no weighting); §4.4–4.7: AP, FT4, LoRA, DoRA and MTLoRA on all
    three tasks with uncertainty weighting, FT4 and MTLoRA also with EMA weighting: 19 runs. Settings.run trains
    the weighting asked for, a notebook's seed and sample cap reach the run, and a method's single-task
    predictions combine its three runs."""
    from replication import reproduce

    assert sorted(reproduce.training_runs()) == sorted(
        [(m, (t,), "none") for m in ("lp", "ap", "ft4", "dora") for t in ("age", "gender", "emotion")]
        + [(m, ("age", "gender", "emotion"), w) for m, w in (("ap", "uw"), ("ft4", "uw"), ("ft4", "ema"),
                                                             ("lora", "uw"), ("dora", "uw"), ("mtlora", "uw"),
                                                             ("mtlora", "ema"))])
    s = reproduce.settings("demo", seed=3, max_train_samples=7)
    cfg = s.train_config("lp", "age")
    assert (cfg.seed, cfg.max_train_samples) == (3, 7)
    trained = []
    monkeypatch.setattr(reproduce.runs, "run", lambda c: trained.append((c.method, c.tasks, c.weighting)) or c)
    monkeypatch.setattr(reproduce.runs, "load_run", lambda c: type("Run", (), {"predictions": c.tasks})())
    monkeypatch.setattr(reproduce.tables, "combined_predictions", list)
    s.run("mtlora", weighting="ema")
    assert s.single_task_predictions("dora") == [("age",), ("gender",), ("emotion",)]
    assert trained == [("mtlora", ("age", "gender", "emotion"), "ema")] + [("dora", (t,), "none") for t in
                                                                          ("age", "gender", "emotion")]
    assert reproduce.select("04_3") == ["04_3_single_task"]
    with pytest.raises(ValueError):
        reproduce.select("3_single")  # names start with it, not contain it


def test_sharded_outputs_with_fewer_rows_than_processes(monkeypatch):
    """_sharded over n rows on w > n ranks: a rank without rows computes nothing (an empty dict, as _run_model
    returns for no batches); the others' outputs still come back in row order."""
    from replication import distributed

    d = distributed.Dist(rank=1, world_size=3)
    results = {0: (np.array([0]), {"age": torch.tensor([[0.0]])}), 1: (np.array([1]), {"age": torch.tensor([[1.0]])}),
               2: (np.array([], dtype=np.int64), {})}
    monkeypatch.setattr(distributed, "all_gather", lambda d_, obj: [results[0], obj, results[2]])
    out = engine._sharded(d, 2, lambda rows: {"age": torch.tensor([[float(r)] for r in rows])})
    assert out["age"].tolist() == [[0.0], [1.0]]
