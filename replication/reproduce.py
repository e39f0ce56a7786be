"""``python3 -m replication reproduce``: the thesis's experiments, notebook by notebook, with papermill.

    python3 -m replication reproduce --profile demo [--only SECTION] [--out DIR]
    python3 -m replication reproduce --profile full --raw-data RAW --detector-dir DIR \\
        --checkpoint PE-Core-L14-336.pt --bpe bpe_simple_vocab_16e6.txt.gz

The notebooks (notebooks/, one per thesis section with experiments) run in chapter order; each
executed copy is written to the profile's folder (notebooks/executed/<profile>/ by default), and
the tables and figures they regenerate go to tables/ and figures/ (tables/<profile>/ and
figures/<profile>/ unless given). Before the notebooks, the data is made ready:

* demo: ``demo-data`` (generated faces in the six native layouts), ``prepare`` (crops + manifest)
  and ``pretrain`` (the tiny encoder's CLIP-style pre-training), each only if its output is missing;
* full: the inputs are checked at once (a clear error names everything missing): the checkpoint and
  the merges, and while the prepared manifest is missing the datasets and the SSD face detector
  that ``prepare`` then crops with.

Interrupted? Run the same command again: finished runs are reused by runs.run (a run folder
with DONE is never retrained, an unfinished one resumes), so the batch continues where it stopped.
Ctrl-C interrupts the running cell, as in Jupyter (a second one stops at once).

This module also holds ``Settings``: the notebooks' parameters resolved against the profile,
which turns a method and tasks into the engine's ``TrainConfig``.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from replication import distributed, runs, tables
from replication.arguments import HelpFormatter, positive_int, reported
from replication.checkpoint import PE_CORE_WEIGHTS
from replication.engine import AMP_MODES, TrainConfig
from replication.files import check_writable
from replication.labels import TASKS
from replication.methods import METHODS
from replication.profiles import REPO, RUN_FIELDS, get_profile
from replication.tokenizer import CLIP_MERGES

NOTEBOOK_DIR = REPO / "notebooks"
NOTEBOOKS = ("02_datasets", "03_methodology", "04_2_zero_shot", "04_3_single_task",
             "04_4_multi_task", "04_5_sota_efficiency", "04_7_balanced_accuracy", "04_8_tsne_pca",
             "05_conclusion")
_PATHS = {"prepared", "runs_dir", "checkpoint", "bpe"}  # Settings' Paths, strings in TrainConfig

# The training runs the notebooks make, one run folder each (shared between notebooks): §4.3 trains
# these methods once per task; §4.4-4.7 train these (method, weighting) pairs on all three tasks.
SINGLE_TASK_METHODS = ("lp", "ap", "ft4", "dora")
MULTI_TASK_RUNS = (("ap", "uw"), ("ft4", "uw"), ("ft4", "ema"), ("lora", "uw"), ("dora", "uw"),
                   ("mtlora", "uw"), ("mtlora", "ema"))


def training_runs() -> list[tuple[str, tuple[str, ...], str]]:
    """(method, tasks, weighting) of every run the thesis trains (the zero-shot baseline trains nothing)."""
    return ([(m, (t,), "none") for m in SINGLE_TASK_METHODS for t in TASKS]
            + [(m, tuple(TASKS), w) for m, w in MULTI_TASK_RUNS])


@dataclass(frozen=True)
class Settings:
    """Everything a notebook needs, resolved from its ``parameters`` cell and the profile."""

    profile: str
    prepared: Path
    runs_dir: Path
    checkpoint: Path | None
    bpe: Path | None
    model_config: str
    tables_dir: Path
    figures_dir: Path
    batch_size: int
    max_epochs: int
    patience: int
    amp: str
    device: str
    num_workers: int
    lr_head: float
    lr_backbone: float
    checkpoint_blocks: dict[str, int] = field(default_factory=dict)  # method -> first blocks checkpointed
    max_train_samples: int | None = None
    seed: int = 0

    @property
    def label(self) -> str:
        return get_profile(self.profile).label

    def ensure_data(self) -> None:
        """Demo: generate, prepare and pre-train whatever is missing (so a notebook also runs on its
        own on a fresh clone). Full: the prepared manifest must exist (``reproduce`` makes it)."""
        if self.profile == "demo":
            ready_demo(get_profile("demo").with_paths(prepared=self.prepared, bpe=self.bpe,
                                                      checkpoint=self.checkpoint))
        elif not (self.prepared / "manifest.csv").exists():
            raise FileNotFoundError(
                f"{self.prepared / 'manifest.csv'} not found: run `python3 -m replication reproduce "
                f"--profile full --raw-data ... --detector-dir ... --checkpoint ... --bpe ...` first")
        elif self.checkpoint is None or self.bpe is None:
            # as `train --profile full` refuses: the engine would start every run from random weights (a
            # test-only mode) and the zero-shot baseline (§4.2) could not tokenize its prompts
            raise ValueError("the full profile needs the parameters checkpoint (PE-Core-L14-336.pt) and bpe "
                             "(bpe_simple_vocab_16e6.txt.gz); `reproduce --profile full` passes both")

    def train_config(self, method: str, tasks=tuple(TASKS), weighting: str | None = None
                     ) -> TrainConfig:
        """The run (runs.run) of ``method`` on ``tasks``: UW for multi-task unless told (§4.4.1)."""
        tasks = (tasks,) if isinstance(tasks, str) else tuple(tasks)
        weighting = weighting or ("uw" if len(tasks) > 1 else "none")
        return TrainConfig(
            method=method, tasks=tasks, weighting=weighting, profile=self.profile, seed=self.seed,
            max_train_samples=self.max_train_samples,
            checkpoint_blocks=self.checkpoint_blocks.get(method, 0),
            **{f: _str(getattr(self, f)) if f in _PATHS else getattr(self, f) for f in RUN_FIELDS})

    def run(self, method: str, tasks=tuple(TASKS), weighting: str | None = None) -> runs.RunResult:
        """The finished run of ``method`` on ``tasks``: trained (or resumed) if it is not finished yet,
        read back as it is if it is (a notebook run again recomputes nothing). A run about to be trained or
        evaluated is named first, so that a notebook's log says which run its epoch lines belong to."""
        cfg = self.train_config(method, tasks, weighting)
        if not (cfg.run_dir / "DONE").exists():
            epochs = f"{cfg.max_epochs} epoch" + "s" * (cfg.max_epochs != 1)
            doing = ("predicting the test sets (zero-shot: no training)" if method == "zero_shot"
                     else f"training (at most {epochs}), then testing its selected epoch")
            print(f"run {cfg.run_dir.name}: {doing}", flush=True)
        return runs.load_run(runs.run(cfg))

    def single_task_predictions(self, method: str):
        """§4.3: the method's three single-task runs, one per task, as one model's test predictions."""
        return tables.combined_predictions(self.run(method, task).predictions for task in TASKS)


def _str(path: Path | None) -> str | None:
    return None if path is None else str(path)


def settings(profile: str = "demo", **overrides) -> Settings:
    """Settings of ``profile`` with the non-None ``overrides`` (a notebook's parameters) applied; a
    ``checkpoint_blocks`` override updates the profile's per method (methods it does not name keep theirs)."""
    p = get_profile(profile)
    base = Settings(profile=p.name, tables_dir=REPO / "tables" / p.name, figures_dir=REPO / "figures" / p.name,
                    checkpoint_blocks=dict(p.checkpoint_blocks), **p.run_settings())
    known = {f.name for f in fields(Settings)}
    unknown = set(overrides) - known
    if unknown:
        raise TypeError(f"unknown settings {sorted(unknown)}; known: {sorted(known)}")
    values = {k: (Path(v) if k in _PATHS | {"tables_dir", "figures_dir"} else v)
              for k, v in overrides.items() if v is not None}
    if "checkpoint_blocks" in values:
        given = checkpoint_blocks_override(values["checkpoint_blocks"])
        values["checkpoint_blocks"] = {**base.checkpoint_blocks, **given}
    return replace(base, **values)


def checkpoint_blocks_override(value: str | Mapping[str, int]) -> dict[str, int]:
    """{method: first blocks activation-checkpointed} from ``"lora=8,dora=12"`` (reproduce --checkpoint-blocks)
    or a mapping (the notebooks' ``checkpoint_blocks`` parameter), checked: known methods, each once, and
    whole numbers >= 0 (a typo must not leave a method at the profile's number unnoticed)."""
    if isinstance(value, str):
        items = [item.partition("=") for item in value.replace(" ", "").split(",") if item]
        if not items or any(not sep or not n.isdecimal() for _, sep, n in items):
            raise ValueError(f"checkpoint_blocks: expected METHOD=N[,METHOD=N...], got {value!r}")
        pairs = [(m, int(n)) for m, _, n in items]
    elif isinstance(value, Mapping):
        pairs = list(value.items())
    else:
        raise ValueError(f"checkpoint_blocks: expected METHOD=N[,METHOD=N...] or {{method: N}}, got {value!r}")
    methods = [m for m, _ in pairs]
    problems = [f"unknown method {m!r} (known: {', '.join(METHODS)})" for m in methods if m not in METHODS]
    problems += [f"{m} given twice" for m in sorted({m for m in methods if methods.count(m) > 1})]
    problems += [f"{m}={n!r} is not a whole number >= 0" for m, n in pairs
                 if isinstance(n, bool) or not isinstance(n, int) or n < 0]
    if problems:
        raise ValueError(f"checkpoint_blocks {value!r}: {'; '.join(problems)}")
    return dict(pairs)


# --- data ---------------------------------------------------------------------------------------

def ready_demo(profile, log=print) -> None:
    """demo-data, prepare and pretrain for the demo profile, each only if its output is missing."""
    from replication import pretrain
    from replication.data import demo, prepare

    if not (profile.prepared / "manifest.csv").exists():
        if not profile.raw_data.exists():
            log(f"reproduce: generating the demo datasets in {profile.raw_data}")
            # generated beside and renamed into place: an interrupted generation is redone by the next run
            # instead of being prepared half-written (prepare takes whichever dataset folders exist)
            partial = profile.raw_data.with_name(profile.raw_data.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            _check(demo.cli(["--out", str(partial)]), "demo-data")
            partial.rename(profile.raw_data)
        log(f"reproduce: preparing face crops in {profile.prepared}")
        _check(prepare.cli(["--data-root", str(profile.raw_data), "--out", str(profile.prepared),
                            "--detector", profile.detector, "--size", str(profile.image_size)]),
               "prepare")
    if not profile.checkpoint.exists():  # checked here too, so a notebook's set-up cell prints nothing when ready
        pretrain.pretrain(profile.prepared, profile.checkpoint, profile.bpe, config=profile.model_config)
        return
    # an encoder pre-trained by hand (`pretrain --steps 60`) is used as it is: said, as its tables will differ
    changed = pretrain.changed_settings(profile.checkpoint, dict(config=profile.model_config, **pretrain.DEFAULTS))
    if changed:
        log(f"reproduce: note: {profile.checkpoint} was pre-trained with other settings than the demo's "
            f"({', '.join(changed)}); it is used as it is, so the results will differ from the committed "
            f"tables/demo; delete it to pre-train the demo's")


def missing_full_inputs(profile) -> list[str]:
    """What the full profile lacks, one line each with where to get it (empty: all there). The datasets and the
    face detector count only while the face crops are still to be made: crops prepared elsewhere (`prepare` on
    another machine, README step 2) are trained on without them."""
    from replication.checkpoint import CheckpointError, check_readable
    from replication.data.faces import DetectorFilesError, locate_ssd_files

    to_prepare = not (profile.prepared / "manifest.csv").exists()
    inputs = [("--checkpoint", profile.checkpoint, "file", f"PE-Core weights: {PE_CORE_WEIGHTS}"),
              ("--bpe", profile.bpe, "file", CLIP_MERGES)]
    if to_prepare:
        inputs.insert(0, ("--raw-data", profile.raw_data, "folder", "the six datasets in their native layouts, "
                          f"to prepare {profile.prepared}"))
    problems = []
    for what, path, kind, source in inputs:
        if path is None:
            problems.append(f"{what} not given ({source})")
        elif not (path.is_dir() if kind == "folder" else path.is_file()):
            problems.append(f"{what} {path}: no such {kind} ({source})")
        elif what == "--checkpoint":
            # a bad download would otherwise surface only after the face crops are prepared; this reads
            # the file's directory, not its 2.5 GiB of weights
            try:
                check_readable(path)
            except CheckpointError as err:
                problems.append(f"{what} {err}")
    if to_prepare:
        try:  # the full profile crops with the thesis's SSD (§2.7); only `prepare` offers other detectors
            locate_ssd_files(profile.detector_dir, options="Pass that folder with --detector-dir.")
        except DetectorFilesError as err:
            problems.append(f"--detector-dir: {err}")
    return problems


def ready_full(profile, log=print) -> None:
    problems = missing_full_inputs(profile)
    if problems:
        raise SystemExit("reproduce --profile full cannot start:\n  " + "\n  ".join(problems)
                         + "\nSee the README, section 'Full replication', for what to download.")
    from replication.data import prepare
    if not (profile.prepared / "manifest.csv").exists():
        log(f"reproduce: preparing face crops in {profile.prepared}")
        _check(prepare.cli(["--data-root", str(profile.raw_data), "--out", str(profile.prepared),
                            "--detector", "ssd", "--detector-dir", str(profile.detector_dir),
                            "--size", str(profile.image_size),
                            "--workers", str(max(1, profile.num_workers))]), "prepare")


def _absolute(text: str) -> Path:
    """A path option, absolute against the caller's working directory: the notebooks run in the repository
    root (papermill's cwd), where a relative path would name another file than the one checked here. Symbolic
    links are kept, as in engine.TrainConfig, so config.json records the same path either way."""
    return Path(os.path.abspath(text))


def _check(code: int, step: str) -> None:
    if code == 130:  # the step was interrupted and said so: reproduce says how to go on
        raise KeyboardInterrupt
    if code != 0:
        raise SystemExit(f"reproduce: `{step}` failed (exit code {code})")


# --- notebooks ----------------------------------------------------------------------------------

def select(only: str | None) -> list[str]:
    """The notebooks to run: all, or those whose name starts with ``only`` ('04_3', '04', ...)."""
    # an empty --only (e.g. an unset shell variable) is refused: every name starts with it
    chosen = [n for n in NOTEBOOKS if only is None or (only and n.startswith(only))]
    if not chosen:
        raise ValueError(f"--only {only!r} matches no notebook; known: {', '.join(NOTEBOOKS)}")
    return chosen


class NotebookError(Exception):
    """A cell of a notebook failed; the message names the notebook, the cell, the error and the partial copy."""


def _kernel_manager(groups: list[int]):
    """jupyter_client's kernel manager, appending the process group of the kernel it starts to ``groups``."""
    from jupyter_client import AsyncKernelManager

    class GroupRecordingKernelManager(AsyncKernelManager):
        async def _async_post_start_kernel(self, **kwargs) -> None:
            await super()._async_post_start_kernel(**kwargs)
            # a provisioner without a process group (another jupyter_client) leaves Ctrl-C stopping papermill
            pgid = getattr(self.provisioner, "pgid", None)
            if pgid is not None:
                groups.append(pgid)

        async def _async_interrupt_kernel(self) -> None:
            # jupyter_client 8 interrupts a kernel before asking it to shut down. papermill shuts it down once
            # its last cell replied (or failed), so there is nothing left to interrupt, and a SIGINT landing while
            # ipykernel still finishes that reply printed "ERROR | KeyboardInterrupt caught in kernel" (seen on a
            # busy machine). Ctrl-C reaches a running cell through the process group (execute), not through here.
            if not getattr(self, "shutting_down", False):
                await super()._async_interrupt_kernel()

    return GroupRecordingKernelManager


def execute(name: str, out_dir: Path, parameters: dict, log=print) -> Path:
    """Run notebooks/<name>.ipynb with papermill; the executed copy goes to <out_dir>/<name>.ipynb.

    papermill saves the copy cell by cell, so it writes <name>.partial.ipynb and renames it only once every
    cell ran: a failed or killed notebook leaves the last complete copy in place, and the partial one (with
    papermill's error cell) beside it. A failed cell is a NotebookError, Ctrl-C a KeyboardInterrupt."""
    import papermill
    from papermill.exceptions import PapermillExecutionError
    from traitlets.config import Config

    out_dir.mkdir(parents=True, exist_ok=True)
    output, partial = out_dir / f"{name}.ipynb", out_dir / f"{name}.partial.ipynb"
    start = time.time()
    kernel: list[int] = []  # the kernel's process group, once it runs
    ctrl_c = signal.getsignal(signal.SIGINT)

    def interrupt_cell(signum, frame):
        """Ctrl-C interrupts the running cell, as in Jupyter: the cell fails with KeyboardInterrupt and the kernel
        is shut down idle. (Ctrl-C stopping papermill mid-cell shut the kernel down with the cell's reply unsent,
        which ipykernel printed as ZMQError tracebacks.) The kernel runs in a process group of its own, which the
        terminal's Ctrl-C does not reach. A second Ctrl-C, or one before the kernel runs, stops papermill."""
        signal.signal(signal.SIGINT, ctrl_c)
        if not kernel:
            raise KeyboardInterrupt
        os.killpg(kernel[0], signal.SIGINT)

    # the kernel is local: over IPC sockets, not TCP ports, which ipykernel warns are unencrypted (Windows has no
    # IPC transport and keeps TCP, nor process groups to interrupt a cell by: there Ctrl-C stops papermill)
    local = {"config": Config({"KernelManager": {"transport": "ipc"}}),
             "kernel_manager_class": _kernel_manager(kernel)} if os.name == "posix" else {}
    if local:
        signal.signal(signal.SIGINT, interrupt_cell)
    try:
        papermill.execute_notebook(str(NOTEBOOK_DIR / f"{name}.ipynb"), str(partial),
                                   parameters=parameters, kernel_name="python3", cwd=str(REPO),
                                   progress_bar=False, **local)
    except PapermillExecutionError as err:
        if err.ename == "KeyboardInterrupt":  # Ctrl-C, handed to the cell
            raise KeyboardInterrupt from None
        # N is the cell's execution count, shown as [N] beside it in the partial copy (which also holds the
        # parameters cell papermill adds, so the source notebook's cell positions would not find it)
        raise NotebookError(f"{name} failed in cell {err.exec_count}: {err.ename}: {err.evalue}; the partly "
                            f"executed copy: {partial}") from None
    finally:
        signal.signal(signal.SIGINT, ctrl_c)
    os.replace(partial, output)
    log(f"reproduce: {name} done in {time.time() - start:.0f}s -> {output}")
    return output


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m replication reproduce",
                                     description=__doc__.split("\n\n")[0],
                                     formatter_class=HelpFormatter)
    parser.add_argument("--profile", choices=("demo", "full"), default="demo",
                        help="demo: tiny model, generated data, CPU; full: PE-Core-L14-336, the real datasets, GPU")
    parser.add_argument("--only", help="run only the notebooks whose name starts with this, "
                                       f"e.g. 04_3 (notebooks: {', '.join(NOTEBOOKS)}; default: all)")
    parser.add_argument("--out", type=_absolute, help="executed notebooks folder "
                                                      "(default notebooks/executed/<profile>)")
    for flag, help_ in (
            ("--raw-data", "full: folder with the six datasets in their native layouts"),
            ("--detector-dir", "full: folder with deploy.prototxt + the res10 SSD caffemodel"),
            ("--checkpoint", "full: PE-Core-L14-336's whole CLIP (Meta's .pt, open_clip's .safetensors or .bin)"),
            ("--bpe", "full: CLIP's bpe_simple_vocab_16e6.txt.gz"),
            ("--prepared", "face crops + manifest.csv (default: the profile's)"),
            ("--runs-dir", "run folders (default: the profile's)"),
            ("--tables-dir", "default tables/<profile>"), ("--figures-dir", "default figures/<profile>")):
        parser.add_argument(flag, type=_absolute, help=help_)
    parser.add_argument("--max-epochs", type=positive_int, help="epoch cap of every run (default: the profile's)")
    parser.add_argument("--max-train-samples", type=positive_int,
                        help="train every run on this many rows drawn from the training split, for a quick look "
                             "(default: all of them)")
    parser.add_argument("--batch-size", type=positive_int, help="batch size of every run (default: the profile's)")
    parser.add_argument("--device", help="e.g. cpu, cuda, cuda:1 (default: the profile's)")
    parser.add_argument("--amp", choices=AMP_MODES, help="autocast dtype (default: the profile's; full: fp16 "
                        "with a GradScaler, §3.1)")
    parser.add_argument("--checkpoint-blocks", metavar="METHOD=N[,METHOD=N...]",
                        help="first N blocks each named method activation-checkpoints, over the profile's (full: "
                             + ",".join(f"{m}={n}" for m, n in get_profile("full").checkpoint_blocks.items())
                             + " for a 48 GB card; bench --plan-checkpointing gives another card's)")
    args = parser.parse_args(argv)
    try:  # a wrong name must not wait for the data and the pre-training
        notebooks = select(args.only)
        checkpoint_blocks = None if args.checkpoint_blocks is None else checkpoint_blocks_override(
            args.checkpoint_blocks)
    except ValueError as err:
        parser.error(str(err))
    # as train checks it: a device torch does not know or the machine lacks failed in 04_2's first run, after the
    # data and notebooks 02-03
    problem = args.device is not None and distributed.device_problem(args.device)
    if problem:
        print(f"reproduce: error: {problem}", file=sys.stderr)
        return 2

    profile = get_profile(args.profile)
    given = {"raw_data": args.raw_data, "detector_dir": args.detector_dir,
             "checkpoint": args.checkpoint, "bpe": args.bpe, "prepared": args.prepared,
             "runs_dir": args.runs_dir}
    profile = profile.with_paths(**{k: v for k, v in given.items() if v is not None})
    return reported("reproduce", lambda: _reproduce(args, profile, notebooks, checkpoint_blocks),
                    (OSError, NotebookError),
                    resume="continues: finished runs are reused and an interrupted one resumes from its last "
                           "checkpoint")


def _reproduce(args: argparse.Namespace, profile, notebooks: list[str], checkpoint_blocks: dict | None) -> int:
    """The data, then the notebooks, as ``cli`` was asked."""
    out_dir = args.out or profile.executed_notebooks
    written = settings(profile.name, tables_dir=args.tables_dir, figures_dir=args.figures_dir)
    # before the data and the training (the runs folder is first written by notebook 04_2, minutes later)
    for folder in (out_dir, written.tables_dir, written.figures_dir, profile.runs_dir):
        check_writable(folder, "folder")
    start = time.time()
    (ready_demo if profile.name == "demo" else ready_full)(profile)
    parameters = {"profile": profile.name, "prepared": str(profile.prepared),
                  "runs_dir": str(profile.runs_dir), "checkpoint": _str(profile.checkpoint),
                  "bpe": _str(profile.bpe), "tables_dir": _str(args.tables_dir),
                  "figures_dir": _str(args.figures_dir), "max_epochs": args.max_epochs,
                  "max_train_samples": args.max_train_samples, "batch_size": args.batch_size,
                  "device": args.device, "amp": args.amp, "checkpoint_blocks": checkpoint_blocks}
    parameters = {k: v for k, v in parameters.items() if v is not None}
    for name in notebooks:
        execute(name, out_dir, parameters)
    print(f"reproduce: {args.profile} profile finished in {time.time() - start:.0f}s; executed "
          f"notebooks in {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(cli())
