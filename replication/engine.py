"""Training and evaluation engine: the config, data, model, evaluation and training loop of one run.

Thesis §3.1 shared settings: AdamW (weight decay 0.01), ReduceLROnPlateau (factor 0.1, patience 5),
automatic mixed precision, batch 128 (§3.7.2), early stopping after 10 epochs without improvement of the
validation loss (single-task) or of the average validation accuracy (multi-task); §3.2 class-balanced
sampling; §3.7 masked multi-task losses with EMA or uncertainty weighting and emotion replication;
§4.1 checkpoint selection (highest validation accuracy, single-task; highest average validation
accuracy, multi-task); test predictions and the §4 results. Decisions the thesis leaves open are stated
where they are made. Run folders and the `train` command are runs.py's.
"""
from __future__ import annotations

import dataclasses
import json
import os
import random
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm  # text bars: tqdm.auto warns in a notebook kernel without ipywidgets (not a dependency)

from replication import distributed
from replication.checkpoint import load_vision
from replication.config import CONFIGS, get_config
from replication.data import ManifestError, read_manifest
from replication.files import atomic_write, atomic_write_text
from replication.labels import MISSING, TASKS, TEST_SETS
from replication.losses import make_weighting, masked_cross_entropy
from replication.methods import METHODS, build_method
from replication.sampling import BalancedSampler, class_balanced_weights, replicate_emotion
from replication.transforms import eval_transform, train_transform

RUN_METHODS = ("zero_shot", *METHODS)  # §4.2 baseline + the adaptation methods of §3.3-3.6.1
AMP_MODES = ("bf16", "fp16", "none")  # autocast dtype (fp16 with a GradScaler, §3.1), or fp32
INPUT_FIELDS = ("prepared", "checkpoint", "bpe")  # TrainConfig's inputs; runs_dir is its output
# TrainConfig's numbers: a test its allowed values pass (and a NaN fails), and how `train` names them
_RANGES = {"batch_size": (lambda v: v >= 1, ">= 1"), "max_epochs": (lambda v: v >= 1, ">= 1"),
           "patience": (lambda v: v >= 1, ">= 1 (epochs without improvement before stopping)"),
           "lr_head": (lambda v: v > 0, "> 0"), "lr_backbone": (lambda v: v > 0, "> 0"),
           "weight_decay": (lambda v: v >= 0, ">= 0"), "seed": (lambda v: v >= 0, ">= 0"),
           "num_workers": (lambda v: v >= 0, ">= 0 (0: images load in the training process)"),
           "checkpoint_blocks": (lambda v: v >= 0, ">= 0 (0: none)"),
           "emotion_share": (lambda v: 0 < v < 1, "in (0, 1) (the emotion rows' share of the training draws)"),
           "max_train_samples": (lambda v: v is None or v >= 1, ">= 1 (not set: every training row)"),
           "checkpoint_every": (lambda v: v >= 1, ">= 1 (steps between mid-epoch saves of last.pt)")}


@dataclass
class TrainConfig:
    """Everything that defines a run (nanoGPT style: one flat config, every field overridable on the CLI).

    The defaults are the thesis's training settings (§3.1, as the full profile has them) with the demo's
    model and folders, on the CPU in fp32, for programmatic use; `train` and the notebooks take every value
    from a profile (profiles.py)."""
    method: str                              # lp | ap | ft4 | lora | dora | mtlora | zero_shot
    tasks: tuple[str, ...]                   # subset of labels.TASKS, in any order
    weighting: str = "uw"                    # §3.7.3 uw | ema (multi-task); none (single-task)
    profile: str = "demo"
    model_config: str = "demo-tiny"
    checkpoint: str | None = None            # PE-Core weights (None: random init, tests only)
    bpe: str | None = None                   # BPE merges (zero-shot only)
    prepared: str = "data/demo/prepared"     # folder with manifest.csv
    runs_dir: str = "runs/demo"
    batch_size: int = 128
    max_epochs: int = 100
    patience: int = 10                       # §3.1 early stopping
    lr_head: float = 1e-4
    lr_backbone: float = 1e-5
    weight_decay: float = 0.01
    amp: str = "none"                        # bf16 | fp16 | none
    seed: int = 0
    num_workers: int = 0
    checkpoint_blocks: int = 0               # activation-checkpoint the first N blocks (0: none; pe.Transformer)
    emotion_share: float = 1 / 3             # §3.7.2
    max_train_samples: int | None = None     # subsample the training rows (demo/notebook budgets)
    cache_embeddings: bool = False           # LP: embed once, without §3.1's augmentation (a speed option)
    checkpoint_every: int = 200              # steps between mid-epoch last.pt saves
    device: str = "cpu"
    run_name: str | None = None              # folder name; default derived from the fields above

    def __post_init__(self):
        # an unknown method would otherwise surface after the model is built, a run folder already written
        if self.method not in RUN_METHODS:
            raise ValueError(f"method must be one of {', '.join(RUN_METHODS)}, got {self.method!r}")
        if isinstance(self.tasks, str):
            self.tasks = tuple(t for t in self.tasks.split(",") if t)
        self.tasks = tuple(self.tasks)
        unknown = [t for t in self.tasks if t not in TASKS]
        if not self.tasks or unknown or len(set(self.tasks)) < len(self.tasks):
            raise ValueError(f"tasks must be a non-empty subset of {', '.join(TASKS)}, each once, "
                             f"got {','.join(self.tasks)!r}")
        if self.method == "mtlora" and len(self.tasks) < 2:
            raise ValueError(f"mtlora learns several tasks (§3.6.1: the last block and the pooling have one "
                             f"adapter set per task), so --tasks must name two or more, got {','.join(self.tasks)!r}; "
                             f"the single-task method with the same backbone adapters is dora")
        if self.weighting not in ("uw", "ema", "none"):
            raise ValueError(f"weighting must be uw, ema or none, got {self.weighting!r}")
        if len(self.tasks) == 1 and self.weighting != "none":
            raise ValueError(f"weighting must be 'none' for a single-task run (plain cross-entropy, §3.1), got "
                             f"{self.weighting!r}: uw and ema weight the losses of several tasks (§3.7.3)")
        if len(self.tasks) > 1 and self.weighting == "none":  # a plain sum of the losses: not a §3.7.3 weighting
            raise ValueError(f"weighting must be uw or ema for a multi-task run (§3.7.3), got 'none': it is the "
                             f"single-task runs' plain cross-entropy")
        if self.amp not in AMP_MODES:
            raise ValueError(f"amp must be {', '.join(AMP_MODES[:-1])} or {AMP_MODES[-1]}, got {self.amp!r}")
        if self.model_config not in CONFIGS:
            raise ValueError(f"--model-config must be one of {', '.join(CONFIGS)}, got {self.model_config!r}")
        for name, (valid, allowed) in _RANGES.items():
            if not valid(getattr(self, name)):
                raise ValueError(f"--{name.replace('_', '-')} must be {allowed}, got {getattr(self, name)}")
        # the folder is <runs_dir>/<run_name>: a separator or '..' would put it elsewhere (or be runs_dir itself)
        if self.run_name and ("/" in self.run_name or os.sep in self.run_name or self.run_name in (".", "..")):
            raise ValueError(f"--run-name must be a folder name, without a path separator and not '.' or '..' "
                             f"(the run is written to --runs-dir/<run name>), got {self.run_name!r}")
        # absolute against the working directory: config.json then names the same files whichever folder a
        # later command (or a notebook, run in the repository root) starts from, relative or absolute flags alike
        for name in (*INPUT_FIELDS, "runs_dir"):
            if getattr(self, name) is not None:
                setattr(self, name, os.path.abspath(getattr(self, name)))

    @property
    def multi_task(self) -> bool:
        return len(self.tasks) > 1

    @property
    def name(self) -> str:
        if self.run_name:
            return self.run_name
        parts = [self.method, "-".join(self.tasks)]
        if self.method == "zero_shot":  # nothing trained: weighting, samples and seed play no part
            return "_".join(parts)
        if self.multi_task:
            parts.append(self.weighting)
        if self.max_train_samples:
            parts.append(f"n{self.max_train_samples}")
        return "_".join(parts + [f"seed{self.seed}"])

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.name


# --- data ---------------------------------------------------------------------------------------------
def read_split(cfg: TrainConfig, split: str) -> pd.DataFrame:
    """Rows of ``split`` with a label for at least one of the run's tasks (others carry no signal)."""
    frame = read_manifest(Path(cfg.prepared) / "manifest.csv")
    frame = frame[frame["split"] == split]
    frame = frame[(frame[list(cfg.tasks)] != MISSING).any(axis=1)].reset_index(drop=True)
    if frame.empty:
        raise ManifestError(f"{Path(cfg.prepared) / 'manifest.csv'}: no {split} rows labelled for {list(cfg.tasks)}")
    return frame


class CropError(ManifestError):
    """A face crop that manifest.csv lists cannot be read. Raised in a DataLoader worker, it reaches the training
    process rebuilt by torch (ExceptionWrapper.reraise) from the worker's whole traceback text: only the message
    after the last "CropError: " in it is kept, so `train` prints the one line, not a traceback."""

    def __init__(self, message: str):
        super().__init__(message.rpartition(f"{CropError.__name__}: ")[2].rstrip("\n"))


class FaceDataset(Dataset):
    """Prepared face crops with their labels for the run's tasks (-1 = missing), one item per row.

    Items may be ``(row, seed)``: the augmentation then draws from its own generator seeded with
    ``seed`` (see sampling.BalancedSampler), so the images a run sees are fixed by the sampler alone."""

    def __init__(self, root: Path, frame: pd.DataFrame, tasks, transform):
        self.root, self.transform = Path(root), transform
        self.paths = frame["path"].tolist()
        self.labels = torch.tensor(frame[list(tasks)].to_numpy(np.int64))

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, item):
        row, seed = item if isinstance(item, tuple) else (item, None)
        path = self.root / self.paths[row]
        try:
            with Image.open(path) as image:
                image = image.convert("RGB")
        except (OSError, ValueError) as e:
            # named by its manifest path: `row` counts within this split's filtered frame, not manifest.csv's lines
            raise CropError(f"cannot read image {path} (manifest.csv path {self.paths[row]!r}): {e}") from e
        if seed is None:
            return self.transform(image), self.labels[row]
        # Only the CPU generator (same images): torch.manual_seed also queues a CUDA reseed that records a
        # Python traceback per image, which took as long as the augmentation itself on the demo's CPU
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            return self.transform(image), self.labels[row]


class TrainingSet:
    """§3.2/§3.7.2 the training rows after emotion replication, and their sampling weights."""

    def __init__(self, cfg: TrainConfig, frame: pd.DataFrame):
        if cfg.max_train_samples and cfg.max_train_samples < len(frame):
            keep = np.random.default_rng(cfg.seed).choice(len(frame), cfg.max_train_samples, replace=False)
            frame = frame.iloc[np.sort(keep)].reset_index(drop=True)
        self.frame = frame
        # §3.7.2 only multi-task training with emotion needs replication (single-task sets are one task)
        if cfg.multi_task and "emotion" in cfg.tasks:
            self.rows = replicate_emotion(frame["emotion"].to_numpy() != MISSING, cfg.emotion_share)
        else:
            self.rows = np.arange(len(frame))
        # §3.2 "averaging the pre-calculated weights of its available age, emotion, and gender labels":
        # every label a row has counts, also in a single-task run (an emotion run's RAF-DB rows carry gender)
        labels = {t: frame[t].to_numpy(np.int64)[self.rows] for t in TASKS}
        self.weights = class_balanced_weights(labels)


class _Rows(Dataset):
    """A dataset seen through an index array (replicated training rows, one rank's evaluation shard)."""

    def __init__(self, base: Dataset, rows: np.ndarray):
        self.base, self.rows = base, rows

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, item):
        if isinstance(item, tuple):
            i, seed = item
            return self.base[(int(self.rows[i]), seed)]
        return self.base[int(self.rows[item])]


# --- model --------------------------------------------------------------------------------------------
def build_model(cfg: TrainConfig):
    """The method's TaskModel and AdamW parameter groups (replication.methods), seeded by ``cfg.seed``."""
    torch.manual_seed(cfg.seed)
    vision = load_vision(cfg.checkpoint, config=cfg.model_config)
    vision.checkpoint_blocks = cfg.checkpoint_blocks
    return build_method(cfg.method, cfg.tasks, vision, lr_head=cfg.lr_head, lr_backbone=cfg.lr_backbone,
                        weight_decay=cfg.weight_decay)


class Objective(nn.Module):
    """Model + §3.7.3 loss weighting in one module, so DDP also averages the gradients of the s_k.

    ``cached=True`` (linear probing): inputs are the frozen backbone's per-task embeddings and only
    the heads run. Under DDP (``dist``) each task's §3.7.1 masked mean divides by the labelled count of
    the global batch, times the number of ranks that DDP's gradient average divides by again: the
    gradient is then the one of the global batch's masked mean, as on the thesis's single GPU."""

    def __init__(self, model: nn.Module, weighting: nn.Module, cached: bool,
                 dist: distributed.Dist = distributed.Dist()):
        super().__init__()
        self.model, self.weighting, self.cached, self.dist = model, weighting, cached, dist

    def forward(self, inputs, targets):
        logits = self.model.classify(inputs) if self.cached else self.model(inputs)
        labelled = distributed.all_reduce_sum(self.dist, (targets != MISSING).sum(0))
        tasks = self.weighting.tasks
        losses = {t: masked_cross_entropy(logits[t], targets[:, i], labelled[i]) * self.dist.world_size
                  for i, t in enumerate(tasks)}
        present = {t: (labelled[i] > 0).float() for i, t in enumerate(tasks)}
        return self.weighting(losses, present), losses


def _param_groups(cfg: TrainConfig, adapted, weighting: nn.Module) -> list[dict]:
    """AdamW groups: the method's (learning rates of §3.3-3.6; weight decay ``cfg.weight_decay`` on every
    parameter, biases, norms and DoRA magnitudes included, as the default ``torch.optim.AdamW`` of §3.1
    does) + the UW log-variances s_k, at the heads' learning rate and without weight decay (see
    losses.UncertaintyWeighting)."""
    groups = list(adapted.param_groups)
    extra = [p for p in weighting.parameters() if p.requires_grad]
    if extra:
        groups.append({"params": extra, "lr": cfg.lr_head, "weight_decay": 0.0, "name": "uncertainty_weighting"})
    return groups


def _autocast(cfg: TrainConfig, device: torch.device):
    if cfg.amp == "none":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if cfg.amp == "bf16" else torch.float16)


def train_step(objective, optimizer, scaler, inputs, targets, autocast) -> dict[str, torch.Tensor]:
    """One AdamW step on one batch; returns the detached per-task losses."""
    # an fp16 forward that overflows gets its step skipped by GradScaler, but it has already run the heads'
    # BatchNorm: its NaN/inf must not stay in the running statistics that every evaluation uses (without a
    # GradScaler the run stops at such a loss, Trainer._observe, so there is nothing to guard)
    running = [] if not scaler.is_enabled() else [
        (b, b.clone()) for m in objective.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
        for b in (m.running_mean, m.running_var)]
    with autocast:
        total, losses = objective(inputs, targets)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(total).backward()
    scaler.step(optimizer)
    scaler.update()
    for b, before in running:  # after backward: autograd checks that its saved inputs were not modified
        torch.where(torch.isfinite(b), b, before, out=b)
    return {t: l.detach() for t, l in losses.items()}


# --- evaluation ---------------------------------------------------------------------------------------
@torch.no_grad()
def _run_model(model, batches, device, autocast) -> dict[str, torch.Tensor]:
    """Concatenated outputs of ``model`` (dict task -> tensor) over ``batches`` of inputs, on CPU."""
    out: dict[str, list] = {}
    for inputs in batches:
        inputs = ({t: x.to(device, non_blocking=True) for t, x in inputs.items()} if isinstance(inputs, dict)
                  else inputs.to(device, non_blocking=True))
        with autocast:
            result = model(inputs)
        for t, v in result.items():
            out.setdefault(t, []).append(v.float().cpu())
    return {t: torch.cat(v) for t, v in out.items()}


def _image_batches(dataset: Dataset, rows: np.ndarray, cfg: TrainConfig):
    # evaluation must not consume the global RNG (a resumed run would drift): own generator
    loader = DataLoader(_Rows(dataset, rows), batch_size=cfg.batch_size, num_workers=cfg.num_workers,
                        pin_memory=torch.device(cfg.device).type == "cuda", generator=torch.Generator())
    return (images for images, _ in loader)


def _sharded(d: distributed.Dist, n: int, compute) -> dict[str, torch.Tensor]:
    """``compute(rows) -> dict task -> (len(rows), ...)`` over all ``n`` rows: each rank runs rows
    rank, rank + world, ...; the results are gathered and put back in row order on every rank."""
    mine = np.arange(d.rank, n, d.world_size)
    gathered = distributed.all_gather(d, (mine, compute(mine)))
    inverse = np.argsort(np.concatenate([m for m, _ in gathered]))
    # a rank without rows (n < world size) ran no batch and returns no outputs: it adds nothing
    tasks = next((out.keys() for m, out in gathered if len(m)), ())
    return {t: torch.cat([out[t] for m, out in gathered if len(m)])[inverse] for t in tasks}


def predict_logits(model, dataset: FaceDataset, cfg: TrainConfig, d: distributed.Dist,
                   embeddings: dict | None = None) -> dict[str, torch.Tensor]:
    """Logits (on CPU) of every row of ``dataset``, in eval mode, sharded over DDP ranks.

    With ``embeddings`` (LP cache) only the heads run, on the cached per-task embeddings."""
    autocast = _autocast(cfg, d.device)

    def compute(rows):
        if embeddings is None:
            return _run_model(model, _image_batches(dataset, rows, cfg), d.device, autocast)
        chunks = ({t: e[rows[i:i + cfg.batch_size]] for t, e in embeddings.items()}
                  for i in range(0, len(rows), cfg.batch_size))
        return _run_model(model.classify, chunks, d.device, autocast)

    was_training = model.training
    model.eval()
    logits = _sharded(d, len(dataset), compute)
    model.train(was_training)
    return logits


def validation_metrics(logits: dict, frame: pd.DataFrame, tasks) -> dict:
    """Per task: masked CE and accuracy over all labelled validation rows, pooled across the source
    datasets (the §4.1 "validation accuracy" of single-task selection; its mean over tasks is the
    multi-task "average accuracy" of §3.1 early stopping and §4.1 selection). Pooled, as the thesis's
    code scores validation; the per-dataset mean of §4 is for the test sets."""
    out = {"val_loss": {}, "val_accuracy": {}}
    for t in tasks:
        y = torch.tensor(frame[t].to_numpy(np.int64))
        out["val_loss"][t] = float(masked_cross_entropy(logits[t], y))
        labelled = y != MISSING
        out["val_accuracy"][t] = float((logits[t].argmax(1)[labelled] == y[labelled]).double().mean())
    out["val_average_accuracy"] = float(np.mean(list(out["val_accuracy"].values())))
    return out


def evaluation_frame(cfg: TrainConfig) -> pd.DataFrame:
    """Test rows of the datasets that test at least one of the run's tasks (§3.1 Table 3.1)."""
    frame = read_split(cfg, "test")
    wanted = {ds for t in cfg.tasks for ds in TEST_SETS[t]}
    frame = frame[frame["dataset"].isin(wanted)].reset_index(drop=True)
    if frame.empty:
        raise ManifestError(f"{Path(cfg.prepared) / 'manifest.csv'}: no test rows of {sorted(wanted)}, the test "
                            f"sets of {list(cfg.tasks)}")
    return frame


def predictions_table(logits: dict, frame: pd.DataFrame, tasks) -> pd.DataFrame:
    """predictions.csv: one row per (test image, task) with a label, on that task's test sets."""
    parts = []
    for t in tasks:
        keep = (frame[t].to_numpy() != MISSING) & frame["dataset"].isin(TEST_SETS[t]).to_numpy()
        parts.append(pd.DataFrame({"path": frame["path"][keep], "dataset": frame["dataset"][keep], "task": t,
                                   "label": frame[t][keep], "pred": logits[t].argmax(1).numpy()[keep]}))
    return pd.concat(parts, ignore_index=True)


# --- training -----------------------------------------------------------------------------------------
def _rng_state(device: torch.device) -> dict:
    """The generators a rank draws from. Of CUDA's, only its own device's: the *_all calls would open a CUDA
    context on every visible GPU from every DDP rank."""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


@dataclass
class Progress:
    """Where training stands; saved in last.pt."""
    epoch: int = 0                 # epochs completed
    step: int = 0                  # batches done in the current epoch
    loss_sums: dict = field(default_factory=dict)   # task -> [sum of batch losses, batches with labels]
    history: list = field(default_factory=list)     # metrics.jsonl records
    best: float | None = None      # best selection value (§4.1)
    best_epoch: int | None = None
    monitor_best: float | None = None  # best early-stopping value (§3.1)
    bad_epochs: int = 0
    finished: bool = False
    nonfinite: dict = field(default_factory=dict)  # task -> batches of the current epoch with a NaN/inf loss


class BatchSizeError(ValueError):
    """The batch size does not fit the run (more than an epoch's training draws, or not divisible by the
    processes); the message says what to change."""


class RunStateError(ValueError):
    """A run folder's last.pt or best.pt cannot be read back, or was written by another number of processes
    or for another model; the message says what to do."""


_START_OVER = "remove the folder {} to train this run from the start"


def read_run_state(path: Path) -> dict:
    """A run folder's last.pt or best.pt, onto the CPU. A file that torch cannot read (a disk that failed,
    a copy cut short: the engine itself writes them atomically) is named, with the way out, not a traceback."""
    try:
        return torch.load(path, map_location="cpu", weights_only=False)  # our own files: RNG states, numpy
    except FileNotFoundError:
        raise
    except Exception as err:  # torch.load gives EOFError, RuntimeError, UnpicklingError, ... by format
        raise RunStateError(f"{path} cannot be read ({type(err).__name__}: {err}); {_START_OVER.format(path.parent)}"
                            ) from None


class Trainer:
    """Builds everything a run needs from its config; ``fit()`` trains (resuming from last.pt)."""

    def __init__(self, cfg: TrainConfig, d: distributed.Dist | None = None):
        self.cfg, self.d = cfg, d or distributed.Dist(device=torch.device(cfg.device))
        self.dir = cfg.run_dir
        adapted = build_model(cfg)
        self.model = adapted.model.to(self.d.device)
        self.weighting = make_weighting(cfg.weighting, cfg.tasks).to(self.d.device)
        self.optimizer = torch.optim.AdamW(_param_groups(cfg, adapted, self.weighting))
        # §3.1 early stopping: the validation loss for single-task, the average validation accuracy for
        # multi-task (loss scales differ per task). §3.1 says the LR schedule watches "the validation loss";
        # the thesis's code (src/train.py) steps it on the early-stopping quantity, accuracy included,
        # and so does this. torch's patience=5 lowers the LR on the 6th epoch without improvement. The text
        # gives no floor; the thesis's code floors each group at 0.1 x 0.09 of its starting rate, so two cuts
        # and a last small step (heads: 1e-4 -> 1e-5 -> 1e-6 -> 9e-7) are all a run can take; so does this.
        self.monitor_mode = "max" if cfg.multi_task else "min"
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optimizer, mode=self.monitor_mode, factor=0.1, patience=5,
            min_lr=[0.009 * g["lr"] for g in self.optimizer.param_groups])
        self.scaler = torch.amp.GradScaler(self.d.device.type, enabled=cfg.amp == "fp16")
        self.autocast = _autocast(cfg, self.d.device)
        self.cached = bool(getattr(self.model, "frozen_backbone", False)) and cfg.cache_embeddings
        objective = Objective(self.model, self.weighting, self.cached, self.d)
        if self.d.enabled:
            ids = None
            if self.d.device.type == "cuda":
                # BatchNorm over the global batch, as on the thesis's single GPU (Gloo/CPU has no SyncBN)
                objective, ids = nn.SyncBatchNorm.convert_sync_batchnorm(objective), [self.d.device.index]
            # static graph: every step uses the same parameters (a task without labels in a batch still
            # takes part, see masked_cross_entropy), and it tolerates trainable parameters that never get a
            # gradient, such as MTLoRA's zero-scaled shared pairs kept for the thesis's parameter count
            objective = DistributedDataParallel(objective, device_ids=ids, static_graph=True)
        self.objective = objective

        size = model_image_size(cfg.model_config)
        root = Path(cfg.prepared)
        self.train_set = TrainingSet(cfg, read_split(cfg, "train"))
        rows = len(self.train_set.frame)
        if (cfg.max_train_samples or 0) > rows and self.d.is_main:  # taken whole, while the folder name says n<N>
            print(f"note: --max-train-samples {cfg.max_train_samples} exceeds the {rows} training rows labelled for "
                  f"{', '.join(cfg.tasks)}: all {rows} are used", file=sys.stderr)
        self.val_frame = read_split(cfg, "val")
        unlabelled = [t for t in cfg.tasks if (self.val_frame[t] == MISSING).all()]
        if unlabelled:  # §4.1 selection and §3.1 stopping would compare NaN accuracies
            raise ManifestError(f"{Path(cfg.prepared) / 'manifest.csv'}: no val rows labelled for {unlabelled}")
        self.train_images = FaceDataset(root, self.train_set.frame, cfg.tasks, train_transform(size))
        self.val_images = FaceDataset(root, self.val_frame, cfg.tasks, eval_transform(size))
        self.sampler = BalancedSampler(self.train_set.weights, cfg.seed, self.d.rank, self.d.world_size)
        # batch_size is the global batch of §3.7.2 (128 on the thesis's one GPU); each rank takes its share
        # and the loss is the global batch's (Objective), so DDP changes the hardware, not the optimisation
        if cfg.batch_size % self.d.world_size:
            raise BatchSizeError(f"--batch-size {cfg.batch_size} is not divisible by the {self.d.world_size} "
                                 f"processes, which take equal shares of each batch: give a multiple of "
                                 f"{self.d.world_size}")
        self.batch = cfg.batch_size // self.d.world_size
        self.steps_per_epoch = self.sampler.num_samples // self.batch
        if self.steps_per_epoch == 0:  # drop_last: an epoch would train nothing
            subsampled = cfg.max_train_samples == len(self.train_set.frame)  # TrainingSet kept that many rows
            rows = (f"a larger --max-train-samples (now {cfg.max_train_samples})" if subsampled else
                    f"more training rows in {Path(cfg.prepared) / 'manifest.csv'}")
            raise BatchSizeError(f"an epoch's {len(self.train_set.rows)} training draws fill no batch of "
                                 f"{cfg.batch_size}: give a --batch-size of at most "
                                 f"{self.sampler.num_samples * self.d.world_size}, or {rows}")
        self.progress = Progress()

    # -- state ----------------------------------------------------------------------------------------
    def _save_last(self) -> None:
        rng = distributed.all_gather(self.d, _rng_state(self.d.device))  # every rank's generators, for exact resume
        if self.d.is_main:
            state = {"model": self.model.trainable_state_dict(), "weighting": self.weighting.state_dict(),
                     "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                     "scaler": self.scaler.state_dict(), "progress": dataclasses.asdict(self.progress), "rng": rng}
            atomic_write(self.dir / "last.pt", lambda tmp: torch.save(state, tmp))

    def _load_last(self) -> bool:
        path = self.dir / "last.pt"
        if not path.exists():
            return False
        # onto the CPU whatever the run's device: torch.set_rng_state takes only a CPU tensor (a CUDA run's
        # resume failed on it), and load_state_dict copies every other tensor onto its parameter's device
        state = read_run_state(path)
        # each rank resumes its own §3.2 sampler shard and generators: another world size cannot continue them
        if len(state["rng"]) != self.d.world_size:
            raise RunStateError(f"{path} was written by {len(state['rng'])} processes, this run has "
                                f"{self.d.world_size}: resume with as many (torchrun --nproc_per_node "
                                f"{len(state['rng'])}), or {_START_OVER.format(self.dir)}")
        try:
            self.model.load_trainable_state_dict(state["model"])
            self.weighting.load_state_dict(state["weighting"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.scaler.load_state_dict(state["scaler"])
            self.progress = Progress(**state["progress"])
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            # config.json matched (runs._same_run), so the code that wrote it differed (another version)
            raise RunStateError(f"{path} does not fit this run's model or optimizer (written by another version "
                                f"of the code?): {type(err).__name__}: {err}; {_START_OVER.format(self.dir)}"
                                ) from None
        _set_rng_state(state["rng"][self.d.rank], self.d.device)
        return True

    def _commit_best(self) -> None:
        """best-next-epochN.pt -> best.pt if last.pt's progress selected epoch N. Any other is a leftover
        of an epoch last.pt does not record (killed before last.pt was written; its replay on a GPU may
        not repeat it bit for bit) and is dropped."""
        if not self.d.is_main:
            return
        for path in self.dir.glob("best-next-epoch*.pt"):
            if path.name == f"best-next-epoch{self.progress.best_epoch}.pt":
                os.replace(path, self.dir / "best.pt")
            else:
                path.unlink()

    def _write_metrics(self) -> None:
        if self.d.is_main:
            atomic_write_text(self.dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in self.progress.history))

    # -- LP embedding cache ---------------------------------------------------------------------------
    def _embed_all(self, dataset: FaceDataset) -> dict[str, torch.Tensor]:
        """§3.3 the frozen backbone's per-task embeddings of every row (eval transform), on the device.

        When the model feeds one tensor to every head (all methods but MTLoRA) it is stored once."""
        tasks = self.cfg.tasks

        def embed(images):
            emb = self.model.embed(images)
            return {"shared": emb[tasks[0]]} if all(emb[t] is emb[tasks[0]] for t in tasks) else emb

        self.model.eval()
        out = _sharded(self.d, len(dataset), lambda rows: _run_model(
            embed, _image_batches(dataset, rows, self.cfg), self.d.device, self.autocast))
        return {t: out.get("shared", out.get(t)).to(self.d.device) for t in tasks}

    def _cache(self) -> tuple[dict, dict]:
        start = time.perf_counter()
        train_eval = FaceDataset(self.cfg.prepared, self.train_set.frame, self.cfg.tasks,
                                 eval_transform(model_image_size(self.cfg.model_config)))
        train, val = self._embed_all(train_eval), self._embed_all(self.val_images)
        self._log(f"LP cache: embedded {len(train_eval)} train + {len(self.val_images)} val images once "
                  f"in {time.perf_counter() - start:.1f}s; epochs now run the heads only")
        return train, val

    def _log(self, text: str) -> None:
        if self.d.is_main:
            print(text, flush=True)

    # -- loop -----------------------------------------------------------------------------------------
    def _batches(self, train_cache):
        """This epoch's remaining training batches (inputs, targets), from the sampler's position."""
        cfg, p = self.cfg, self.progress
        self.sampler.set_epoch(p.epoch, start=p.step * self.batch)
        if train_cache is not None:
            idx, _ = self.sampler.draws()
            rows = torch.as_tensor(self.train_set.rows)[idx]
            labels = self.train_images.labels
            for s in range(p.step, self.steps_per_epoch):
                r = rows[s * self.batch:(s + 1) * self.batch]
                yield {t: e[r] for t, e in train_cache.items()}, labels[r]
            return
        # an explicit generator keeps the DataLoader from drawing its base seed from the global RNG
        loader = DataLoader(_Rows(self.train_images, self.train_set.rows), batch_size=self.batch,
                            sampler=self.sampler, drop_last=True, num_workers=cfg.num_workers,
                            pin_memory=self.d.device.type == "cuda",
                            generator=torch.Generator().manual_seed(cfg.seed))
        yield from loader

    def _observe(self, losses: dict, targets: torch.Tensor) -> None:
        """Feed the global batch's losses to the EMA weighting and the epoch means. Each rank's loss is its
        share of the global masked mean (see Objective), so their mean over ranks is that mean."""
        tasks = self.cfg.tasks
        present = (targets != MISSING).any(0).to(torch.float64).cpu()
        stats = distributed.all_reduce_mean(self.d, torch.cat([
            torch.stack([losses[t].double().cpu() for t in tasks]), present]))
        k = len(tasks)
        values = {t: float(stats[i]) for i, t in enumerate(tasks)}
        seen = {t: bool(stats[k + i] > 0) for i, t in enumerate(tasks)}
        bad = [t for t in tasks if seen[t] and not np.isfinite(values[t])]
        if bad:
            if not self.scaler.is_enabled():  # nothing stopped the step: the weights are now NaN/inf
                raise FloatingPointError(
                    f"{self.dir}: non-finite {', '.join(bad)} loss at epoch {self.progress.epoch + 1}, step "
                    f"{self.progress.step + 1} ({self.cfg.amp}); last.pt holds the state before it")
            # fp16: GradScaler skipped this step. The batch is no observation of any loss (a NaN in the
            # §3.7.3 EMA would make every later weight NaN); it is counted in metrics.jsonl instead
            for t in bad:
                self.progress.nonfinite[t] = self.progress.nonfinite.get(t, 0) + 1
            seen = {t: seen[t] and t not in bad for t in tasks}
        self.weighting.observe(values, seen)
        for t in tasks:
            if seen[t]:
                s = self.progress.loss_sums.setdefault(t, [0.0, 0])
                s[0], s[1] = s[0] + values[t], s[1] + 1

    def _end_epoch(self, val_cache, seconds: float) -> None:
        """Validation, LR schedule, §4.1 selection, §3.1 early stopping, then last.pt and metrics.jsonl."""
        cfg, p = self.cfg, self.progress
        distributed.broadcast_buffers(self.d, self.model)
        logits = predict_logits(self.model, self.val_images, cfg, self.d, val_cache)
        record = {"epoch": p.epoch + 1,
                  "lr": {g.get("name", str(i)): g["lr"] for i, g in enumerate(self.optimizer.param_groups)},
                  "train_loss": {t: s / n for t, (s, n) in p.loss_sums.items()},
                  "nonfinite_batches": dict(p.nonfinite),
                  **validation_metrics(logits, self.val_frame, cfg.tasks), **self.weighting.log()}
        if cfg.multi_task:
            monitor = selection = record["val_average_accuracy"]
        else:
            (task,) = cfg.tasks
            monitor, selection = record["val_loss"][task], record["val_accuracy"][task]
        self.scheduler.step(monitor)
        improved = p.best is None or selection > p.best
        if improved:
            p.best, p.best_epoch = selection, p.epoch + 1
            if self.d.is_main:  # becomes best.pt once last.pt records it (_commit_best)
                best = {"model": self.model.trainable_state_dict(), "epoch": p.best_epoch, "selection": selection}
                atomic_write(self.dir / f"best-next-epoch{p.best_epoch}.pt", lambda tmp: torch.save(best, tmp))
        better = p.monitor_best is None or (monitor > p.monitor_best if self.monitor_mode == "max"
                                            else monitor < p.monitor_best)
        p.monitor_best = monitor if better else p.monitor_best
        p.bad_epochs = 0 if better else p.bad_epochs + 1
        record.update(selection=selection, monitor=monitor, best_epoch=p.best_epoch, train_seconds=round(seconds, 3))
        p.history.append(record)
        p.epoch, p.step, p.loss_sums, p.nonfinite = p.epoch + 1, 0, {}, {}
        p.finished = p.bad_epochs >= cfg.patience or p.epoch >= cfg.max_epochs
        # metrics.jsonl, then last.pt, then best.pt: a run killed between two of them replays this epoch
        # (last.pt not yet written) or finds in last.pt everything the other files must say
        self._write_metrics()
        self._save_last()
        self._commit_best()
        fmt = lambda d: " ".join(f"{t} {v:.4f}" for t, v in d.items())  # noqa: E731
        watched = "val average accuracy" if cfg.multi_task else "val loss"  # §3.1 early stopping's quantity
        self._log(f"epoch {p.epoch} ({seconds:.1f}s): train loss {fmt(record['train_loss'])} | val loss "
                  f"{fmt(record['val_loss'])} | val acc {fmt(record['val_accuracy'])} | "
                  f"{'new best' if improved else f'best epoch {p.best_epoch}'} | {watched}: {p.bad_epochs}/"
                  f"{cfg.patience} epochs without improvement")
        if record["nonfinite_batches"]:
            self._log(f"epoch {p.epoch}: batches skipped for a non-finite loss (fp16 overflow): "
                      f"{record['nonfinite_batches']}")

    def fit(self) -> None:
        cfg = self.cfg
        if self.d.is_main:
            self.dir.mkdir(parents=True, exist_ok=True)
        distributed.barrier(self.d)
        resumed = self._load_last()
        self._commit_best()
        distributed.barrier(self.d)
        p = self.progress
        if resumed:
            self._log(f"resuming {self.dir} at epoch {p.epoch + 1}, step {p.step}")
        if p.finished:
            return
        train_cache, val_cache = self._cache() if self.cached else (None, None)
        self.objective.train()
        while not p.finished:
            if p.step == 0:
                self.weighting.start_epoch()  # §3.7.3 EMA weights are fixed for the whole epoch
            start = time.perf_counter()
            bar = tqdm(total=self.steps_per_epoch, initial=p.step, desc=f"epoch {p.epoch + 1}", leave=False,
                       mininterval=10, disable=not self.d.is_main)
            for inputs, targets in self._batches(train_cache):
                inputs = ({t: x.to(self.d.device) for t, x in inputs.items()} if isinstance(inputs, dict)
                          else inputs.to(self.d.device, non_blocking=True))
                targets = targets.to(self.d.device)
                losses = train_step(self.objective, self.optimizer, self.scaler, inputs, targets, self.autocast)
                self._observe(losses, targets)
                p.step += 1
                bar.update()
                if p.step % cfg.checkpoint_every == 0 and p.step < self.steps_per_epoch:
                    self._save_last()
            bar.close()
            self._end_epoch(val_cache, time.perf_counter() - start)


def model_image_size(config: str) -> int:
    """The side in pixels of the images the encoder of ``config`` takes (the transforms resize crops to it)."""
    return get_config(config).vision.image_size
