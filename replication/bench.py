"""`python3 -m replication bench`: GPU speed and memory of every adaptation method (benchmarks/README.md).

For each method of thesis §3.3–3.6.1 (LP, AP, FT4, LoRA, DoRA, MTLoRA), built with the three multi-task
heads (age 9, gender 2, emotion 7 classes; §3.7) on the chosen PE-Core architecture with *random* weights
and synthetic images, this measures

* the training step (forward + backward + AdamW step, autocast in the chosen dtype, §3.7.1 masked
  cross-entropy with §3.7.3 uncertainty weighting): images/s, peak GPU memory, achieved TFLOP/s and the
  fraction of the card's bf16 matmul peak, measured in the same run;
* inference of the deployable model: LoRA/DoRA merged into the backbone (``merge_adapters``; §3.6 "no
  additional inference overhead"), MTLoRA with what it cannot merge (§3.6.1);
* for LP, the frozen encoder's forward pass (the caching pass of ``--cache-embeddings``, and the
  encoder's share of every LP training step, which builds no graph) and the heads' step on its features;
* optionally the input pipeline (``--data-loading``: JPEG decode + Listing 3.1 augmentation + collation).

peft's LoRA/DoRA around the same encoder is timed by benchmarks/peft_compare.py with this module's pieces:
the library writes its methods by hand and keeps peft out.

FLOPs are *counted*, not estimated from a formula that could drift from the code: `FlopCounter` runs one
forward pass and adds up 2·MACs of every matmul, convolution and attention op that actually executes
(torch's own per-op formulas, `torch.utils.flop_counter`; attention QK^T and AV included). A training step
is charged 3x the forward FLOPs of the ops in the autograd graph (backward ≈ grad-input + grad-weight) and
1x for the ops before the first trainable parameter (a frozen prefix runs forward only). `FLOP_CONVENTION`
states this in the JSON; benchmarks/README.md explains it with the formulas for PE-Core.

CUDA timing uses torch.cuda.Event around each step after synchronising; warm-up steps are excluded and
the median of the timed steps is reported. On CPU the same code runs with time.perf_counter (smoke test).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shlex
import statistics
import sys
import tempfile
import time
import traceback
import weakref
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from replication import accounting, distributed, engine
from replication.arguments import (HelpFormatter, checkpoint_blocks_problem, model_config, number, positive_int,
                                   reported)
from replication.config import get_config
from replication.engine import FaceDataset, TrainConfig, build_model, model_image_size
from replication.files import atomic_write_text, check_writable
from replication.labels import NUM_CLASSES
from replication.lora import merge_adapters
from replication.losses import make_weighting
from replication.methods import METHODS
from replication.pe import Transformer
from replication.profiles import get_profile
from replication.reproduce import training_runs
from replication.sampling import emotion_replication_factor
from replication.thesis import TABLE_3_2_TASKS
from replication.transforms import train_transform

AMP = {"bf16": "bf16", "fp16": "fp16", "fp32": "none"}  # --dtype -> the engine's TrainConfig.amp
L40S_BYTES = 46068 * 2**20  # the thesis's card (48 GB L40S) as nvidia-smi reports it
RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"

FLOP_CONVENTION = (
    "FLOPs = 2 x multiply-accumulates of every matmul, convolution and attention op executed (QK^T and AV "
    "included; softmax, norms, activations, elementwise ops and the optimizer not counted), counted per op by "
    "torch.utils.flop_counter formulas during one real step at the benchmark batch size. "
    "Training step = 3 x forward FLOPs of ops in the autograd graph (an input requires grad) + 1 x forward "
    "FLOPs of ops outside it (frozen prefix, forward only). Activation recomputation from gradient "
    "checkpointing is not counted. Inference = 1 x forward FLOPs. 'flops' = per step (whole batch). "
    "'executed_gflop_per_image' = forward + backward ops actually run, counted by the same formulas "
    "(attention backward as torch counts it, checkpointing recomputation included)."
)


# --- FLOP counting ---------------------------------------------------------------------------------------
def _formulas() -> dict:
    """torch's FLOP formulas, plus the CPU flash-attention kernel's where this torch lacks it (releases
    before 2.15 count SDPA on CUDA only; the CPU kernel computes the same products as the CUDA one)."""
    formulas = dict(flop_registry)
    aten = torch.ops.aten
    for cpu, cuda in (("_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_flash_attention"),
                      ("_scaled_dot_product_flash_attention_for_cpu_backward",
                       "_scaled_dot_product_flash_attention_backward")):
        formulas.setdefault(getattr(aten, cpu), flop_registry[getattr(aten, cuda)])
    return formulas


FORMULAS = _formulas()


class FlopCounter(TorchDispatchMode):
    """Adds up torch's FLOP formulas (2·MACs) for every matmul/conv/attention op run inside its scope.

    Forward ops are split by whether grad mode is on and a tensor argument requires grad, i.e. whether the
    op enters the autograd graph and will be differentiated (DoRA's detached weight norm, computed under
    no_grad, does not); after `start_backward()` every op counts as backward.
    Ops without a formula are decomposed (as torch's FlopCounterMode does) so that composite ops reach
    the aten matmuls they are made of."""

    def __init__(self):
        super().__init__()
        self.graph = self.no_graph = self.backward = 0
        self._in_backward = False

    def start_backward(self) -> None:
        self._in_backward = True

    @property
    def forward(self) -> int:
        return self.graph + self.no_graph

    @property
    def training(self) -> int:
        """The model-FLOP convention of a training step (FLOP_CONVENTION)."""
        return 3 * self.graph + self.no_graph

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        formula = FORMULAS.get(func._overloadpacket)
        if formula is None:
            with self:
                decomposed = func.decompose(*args, **kwargs)
            if decomposed is not NotImplemented:
                return decomposed
            return func(*args, **kwargs)
        out = func(*args, **kwargs)
        flops = formula(*args, **kwargs, out_val=out)
        if self._in_backward:
            self.backward += flops
        elif torch.is_grad_enabled() and any(
                t.requires_grad for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)):
            self.graph += flops
        else:
            self.no_graph += flops
        return out


# --- activation memory ------------------------------------------------------------------------------------
class SavedTensors:
    """Bytes of the distinct tensors a forward pass keeps for backward (the activations), counted inside
    its scope with torch.autograd.graph.saved_tensors_hooks; parameters are not counted, autocast's
    low-precision weight copies are. The count depends on the model and batch, not on the device, so a CPU
    run at a small batch predicts a GPU's activation memory at batch 128.

    What counts is what the graph still holds when the scope ends: a tensor saved by a part of the graph the
    forward then drops (peft's DoRA builds some) is freed by then and left out.

    With activation checkpointing the hooks see what is saved outside the checkpointed blocks and the input
    each checkpointed block keeps for its recomputation (torch saves it like any other tensor); the one
    block recomputed at a time during backward is not included."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.bytes = 0

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in self._params:
            self._saved.append((weakref.ref(t), storage.data_ptr(), storage.nbytes()))
        return t

    def __enter__(self) -> "SavedTensors":
        self._params = {p.untyped_storage().data_ptr() for p in self.model.parameters()}
        self._saved = []
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)
        held = {ptr: nbytes for ref, ptr, nbytes in self._saved if ref() is not None}  # views share a storage
        self.bytes = sum(held.values())
        self._saved = []


# --- timing ----------------------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn, device: torch.device, steps: int, warmup: int) -> list[float]:
    """Seconds of each of `steps` calls of fn() after `warmup` untimed calls (CUDA events on GPU)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(steps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return times


def matmul_peak_tflops(device: torch.device, steps: int = 20, warmup: int = 5) -> float:
    """The card's achievable dense bf16 matmul rate, measured: a large square matmul (8192 on GPU)."""
    n = 8192 if device.type == "cuda" else 256
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    seconds = statistics.median(time_calls(lambda: a @ b, device, steps, warmup))
    return 2 * n**3 / seconds / 1e12


def thesis_epoch_images() -> int:
    """Draws per multi-task epoch on the thesis's training set (Table 3.2a: 168,362 images, 9,215 with an
    emotion label), after §3.7.2 replication of the emotion images to a third of the set."""
    total, emotion = TABLE_3_2_TASKS.value("total", "samples"), TABLE_3_2_TASKS.value("emotion", "samples")
    has_emotion = np.arange(total) < emotion
    return total - emotion + emotion_replication_factor(has_emotion) * emotion


# --- helpers (public where benchmarks/peft_compare.py measures with them too) ---------------------------
def reset_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_memory(device: torch.device) -> dict:
    """Peak allocated/reserved GiB since the last reset (None on CPU: not measured)."""
    if device.type != "cuda":
        return {"peak_alloc_gib": None, "peak_reserved_gib": None, "fits_l40s": None}
    reserved = torch.cuda.max_memory_reserved(device)
    return {"peak_alloc_gib": torch.cuda.max_memory_allocated(device) / 2**30,
            "peak_reserved_gib": reserved / 2**30, "fits_l40s": reserved < L40S_BYTES}


def synthetic_batch(batch: int, size: int, device: torch.device, seed: int = 0):
    """Random images and a (batch, tasks) label matrix, every task labelled."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, size, size, generator=g).to(device)
    targets = torch.stack([torch.randint(0, c, (batch,), generator=g) for c in NUM_CLASSES.values()], 1)
    return images, targets.to(device)


def _rates(times: list[float], batch: int, flops: int, peak: float) -> dict:
    median = statistics.median(times)
    return {"step_ms": 1e3 * median, "step_ms_all": [1e3 * t for t in times], "images_per_s": batch / median,
            "flops": flops, "gflop_per_image": flops / batch / 1e9, "tflops": flops / median / 1e12,
            "frac_of_peak": flops / median / 1e12 / peak}


def checkpoint_blocks(method: str, mode: str, config: str) -> int:
    """How many of the first blocks --checkpoint-blocks `mode` checkpoints for `method`: off (none), all,
    profile (as the full profile trains it: `Profile.checkpoint_blocks`) or a number."""
    if mode == "profile":
        return get_profile("full").checkpoint_blocks.get(method, 0)
    named = {"off": 0, "all": get_config(config).vision.layers}
    return named[mode] if mode in named else int(mode)


def _checkpoint_mode(text: str) -> str:
    if text in ("off", "all", "profile") or text.isdecimal():
        return text
    raise argparse.ArgumentTypeError(f"expected off, all, profile or a number of blocks, got {text!r}")


def train_config(method: str, args) -> TrainConfig:
    return TrainConfig(method=method, tasks=tuple(NUM_CLASSES), weighting="uw", model_config=args.config,
                       batch_size=args.batch, amp=AMP[args.dtype],
                       checkpoint_blocks=checkpoint_blocks(method, args.checkpoint_blocks, args.config),
                       device=args.device)


def param_counts(model: torch.nn.Module) -> dict:
    return {"params": sum(p.numel() for p in model.parameters()),
            "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad)}


def _blocks(model: torch.nn.Module) -> dict:
    """The backbone's block stack: its length, how many of its blocks build an autograd graph (from the first
    with a trainable parameter on; the frozen ones before it run forward only) and how many of those the
    model checkpoints (`pe.Transformer.checkpoint_blocks`)."""
    transformer = next(m for m in model.modules() if isinstance(m, Transformer))
    blocks = transformer.resblocks
    trains = [any(p.requires_grad for p in b.parameters()) for b in blocks]
    graph = len(blocks) - (trains.index(True) if any(trains) else len(blocks))
    return {"blocks": len(blocks), "graph_blocks": graph,
            "checkpointed_blocks": _checkpointed(transformer.checkpoint_blocks, len(blocks), graph)}


def _checkpointed(first: int, blocks: int, graph_blocks: int) -> int:
    """Graph-building blocks among the `first` checkpointed ones (the graph starts `blocks - graph_blocks` in)."""
    return max(0, min(first, blocks) - (blocks - graph_blocks))


class Step:
    """The engine's own training step (engine.Objective + engine.train_step: masked CE per task, §3.7.3
    uncertainty weighting, AdamW with the method's parameter groups, GradScaler for fp16). `groups`, a
    function of the weighting module, gives the parameter groups of a model the engine did not adapt."""

    def __init__(self, cfg, adapted, model, device, cached: bool, fused_adamw: bool, groups=None):
        weighting = make_weighting(cfg.weighting, cfg.tasks).to(device)
        groups = engine._param_groups(cfg, adapted, weighting) if groups is None else groups(weighting)
        self.optimizer = torch.optim.AdamW(groups, fused=fused_adamw or None)
        self.scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")
        self.autocast = engine._autocast(cfg, device)
        self.objective = engine.Objective(model, weighting, cached)
        self.run = self.objective

    def __call__(self, inputs, targets) -> None:
        engine.train_step(self.run, self.optimizer, self.scaler, inputs, targets, self.autocast)

    def count(self, inputs, targets) -> tuple[FlopCounter, SavedTensors]:
        """FLOPs and saved activations of one step on the eager model (forward and backward; the optimizer
        step changes nothing)."""
        counter, saved = FlopCounter(), SavedTensors(self.objective)
        with counter:
            with saved, self.autocast:
                total, _ = self.objective(inputs, targets)
            counter.start_backward()
            total.backward()
        self.optimizer.zero_grad(set_to_none=True)
        return counter, saved

    def measure(self, inputs, targets, args, device, peak: float) -> dict:
        counter, saved = self.count(inputs, targets)
        if args.compile:
            self.run = torch.compile(self.objective)
        reset_memory(device)
        times = time_calls(lambda: self(inputs, targets), device, args.steps, args.warmup)
        row = {**_rates(times, args.batch, counter.training, peak), **_peak_memory(device)}
        row["executed_gflop_per_image"] = (counter.forward + counter.backward) / args.batch / 1e9
        row["saved_activation_gib"] = saved.bytes / 2**30
        row.update(_blocks(self.objective))
        return row


def _infer(fn, inputs, cfg: TrainConfig, args, device, peak: float) -> dict:
    """Inference throughput of fn(inputs) (inference mode, the run's autocast), FLOPs counted on one eager call."""
    counter = FlopCounter()
    with counter, torch.inference_mode(), engine._autocast(cfg, device):
        fn(inputs)
    run = torch.compile(fn) if args.compile else fn

    def call():
        with torch.inference_mode(), engine._autocast(cfg, device):
            return run(inputs)

    reset_memory(device)
    times = time_calls(call, device, args.steps, args.warmup)
    return {**_rates(times, args.batch, counter.forward, peak), **_peak_memory(device)}


# --- one method ------------------------------------------------------------------------------------------
def bench_method(method: str, args, device: torch.device, peak: float, infer: bool = True) -> dict:
    """Training step, inference (merged where possible; ``infer=False`` skips it) and, for LP, the frozen
    encoder alone."""
    cfg = train_config(method, args)
    adapted = build_model(cfg)
    model = adapted.model.to(device).train()
    images, targets = synthetic_batch(args.batch, model_image_size(args.config), device)
    row = {"method": method, **param_counts(model)}

    if getattr(model, "frozen_backbone", False):
        # §3.3: the frozen encoder's forward and the heads' step, timed apart (wall_clock adds them up)
        model.eval()
        row["cache"] = _infer(model.embed, images, cfg, args, device, peak)
        with torch.no_grad(), engine._autocast(cfg, device):
            inputs = {t: e.float() for t, e in model.embed(images).items()}
        model.train()
        row["train_input"] = "cached features"
    else:
        inputs = images
        row["train_input"] = "images"
    step = Step(cfg, adapted, model, device, cached=inputs is not images, fused_adamw=args.fused_adamw)
    row["train"] = step.measure(inputs, targets, args, device, peak)
    encoder = row.get("cache")  # LP's epoch also runs the frozen encoder on every augmented draw (§3.1)
    seconds_per_image = 1 / row["train"]["images_per_s"] + (1 / encoder["images_per_s"] if encoder else 0.0)
    row["train"]["epoch_minutes"] = thesis_epoch_images() * seconds_per_image / 60
    del step
    model.zero_grad(set_to_none=True)
    if not infer:
        return row

    # Inference of the deployable model: LoRA/DoRA folded into the weights (§3.6, no extra cost); MTLoRA's
    # task-specific branches cannot be folded (§3.6.1), merge_adapters folds the shared ones.
    model.eval()
    merge_adapters(model)
    row["infer"] = _infer(model, images, cfg, args, device, peak)
    row["infer"]["merged"] = any(getattr(m, "merged", False) for m in model.modules())
    # Cross-check with accounting.py's analytic count (same convention: 2 x all MACs, attention included).
    analytic = accounting.gflops(args.config, accounting.MATMUL_WEIGHTS)["mtlora" if method == "mtlora" else "ft4"]
    row["infer"]["accounting_gflop_per_image"] = analytic
    if abs(row["infer"]["gflop_per_image"] - analytic) > 1e-6 * analytic:
        print(f"[{method}] warning: counted {row['infer']['gflop_per_image']:.4f} GFLOP/image at inference, "
              f"accounting.gflops says {analytic:.4f}")
    return row


# --- input pipeline --------------------------------------------------------------------------------------
def _write_jpegs(folder: Path, n: int, size: int) -> list[str]:
    """Face-crop-like JPEGs at the model resolution (as `prepare` writes them): smooth random images
    (bicubic-upsampled 8x8 noise plus mild pixel noise), quality 95. Returns paths relative to `folder`."""
    rng = np.random.default_rng(0)
    names = []
    for i in range(n):
        low = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize((size, size), Image.BICUBIC)
        pixels = np.clip(np.asarray(low, dtype=np.int16) + rng.integers(-12, 13, (size, size, 3)), 0, 255)
        names.append(f"{i:05d}.jpg")
        Image.fromarray(pixels.astype(np.uint8)).save(folder / names[-1], quality=95)
    return names


def bench_data_loading(args, size: int, device: torch.device) -> dict:
    """Images/s of the engine's input pipeline: engine.FaceDataset (PIL decode, Listing 3.1 train_transform,
    per-sample seeded augmentation as the BalancedSampler asks for) -> DataLoader collation -> device."""
    workers = args.workers
    # With W workers the first W batches are produced in parallel from the start and arrive together;
    # the steady-state rate is read from the arrivals after that first wave.
    skip = max(workers, 1)
    batches = max(args.loader_batches or 4 * skip, skip + 2)
    with tempfile.TemporaryDirectory() as tmp:
        names = _write_jpegs(Path(tmp), args.loader_images, size)
        frame = pd.DataFrame({"path": names, **{t: [0] * len(names) for t in NUM_CLASSES}})
        dataset = FaceDataset(Path(tmp), frame, tuple(NUM_CLASSES), train_transform(size))
        draws = [(i % len(names), i) for i in range(args.batch * batches)]  # (row, augmentation seed)
        loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch, sampler=draws, num_workers=workers,
                                             pin_memory=device.type == "cuda", drop_last=True)
        arrivals = []
        for images, _ in loader:
            images.to(device, non_blocking=True)
            _sync(device)
            arrivals.append(time.perf_counter())
    timed = len(arrivals) - skip
    return {"workers": workers, "images": timed * args.batch, "distinct_jpegs": len(names), "image_size": size,
            "images_per_s": timed * args.batch / (arrivals[-1] - arrivals[skip - 1]),
            "pin_memory": device.type == "cuda"}


# --- driver ----------------------------------------------------------------------------------------------
def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:  # Linux: the CPU model, e.g. "AMD EPYC 7R13 Processor"
        with open("/proc/cpuinfo") as cpuinfo:
            return next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine() or "cpu"


def guarded(label: str, batch: int, measure, *measure_args) -> dict:
    """measure(*measure_args), or a row saying why there is none: it ran out of memory, or it failed (the
    traceback goes to stderr). Recorded, not hidden: the table shows the row, and `exit_status` turns a
    failed one into the command's exit status. The measurements after it still run: a GPU lease is short."""
    print(f"[{label}] ...", flush=True)
    try:
        return measure(*measure_args)
    except torch.cuda.OutOfMemoryError as e:
        print(f"[{label}] out of memory at batch {batch}: {str(e).splitlines()[0]}")
        return {"method": label, "error": "out of memory"}
    except Exception as e:  # a bug in one method must not cost the others' numbers
        traceback.print_exc()
        message = (str(e).splitlines() or [""])[0]
        error = f"failed: {type(e).__name__}" + (f": {message}" if message else "")
        print(f"[{label}] {error}", flush=True)
        return {"method": label, "error": error}


def exit_status(result: dict, prog: str) -> int:
    """The exit status of a measuring command: 1, saying so on stderr, if a row failed (not out of memory,
    which is a result), else 0."""
    failed = [r["method"] for r in result["rows"] if r.get("error", "").startswith("failed")]
    if failed:
        print(f"{prog}: error: {', '.join(failed)} failed (traceback above); the other rows were measured",
              file=sys.stderr)
    return 1 if failed else 0


def result_path(kind: str, device: torch.device) -> Path:
    """The default JSON path: benchmarks/results/<kind>-<device>-<date-time>.json."""
    name = re.sub(r"[^a-z0-9]+", "-", _device_name(device).lower()).strip("-")
    return RESULTS / f"{kind}-{name}-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}.json"


def start_result(args, command: str) -> tuple[torch.device, dict]:
    """The device, and the result dict with the run's record (device, versions, date, `command`, settings,
    the bf16 matmul peak measured now) and no measurement yet; benchmarks/peft_compare.py fills the same
    dict, so format_table and --project read its JSON too."""
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    peak = matmul_peak_tflops(device)
    print(f"{_device_name(device)}: measured bf16 matmul peak {peak:.1f} TFLOP/s", flush=True)
    return device, {
        "device": _device_name(device), "device_type": device.type, "torch": torch.__version__,
        "cuda": torch.version.cuda, "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": command, "config": args.config,
        "image_size": model_image_size(args.config), "dtype": args.dtype, "batch": args.batch,
        "steps": args.steps, "warmup": args.warmup, "checkpoint_blocks": args.checkpoint_blocks,
        "compile": args.compile, "fused_adamw": args.fused_adamw, "weights": "random (architecture only)",
        "step": "engine.train_step: masked CE, uncertainty weighting, AdamW (method's param groups)",
        "timing": "median of timed steps (CUDA events after synchronize), warm-up steps excluded",
        "peak_bf16_tflops": peak, "flop_convention": FLOP_CONVENTION, "epoch_images": thesis_epoch_images(),
        "epoch_minutes": "training steps only (no validation, no data loading) for epoch_images draws; LP: "
                         "the encoder's forward (cache row) plus the heads' step",
        "rows": [], "data_loading": None,
    }


def run(args, argv: list[str], out: Path) -> dict:
    """Every measurement the arguments ask for, as one dict, rewritten to `out` after each measurement
    (a run cut short keeps what it measured)."""
    device, result = start_result(args, "python3 -m replication bench " + shlex.join(argv))
    peak = result["peak_bf16_tflops"]
    for method in args.methods:
        result["rows"].append(guarded(method, args.batch, bench_method, method, args, device, peak))
        reset_memory(device)
        write_json(result, out)
    if args.data_loading:
        print("[data loading] ...", flush=True)
        dl = bench_data_loading(args, model_image_size(args.config), device)
        dl["loader_over_train_rate"] = {r["method"]: dl["images_per_s"] / r["train"]["images_per_s"]
                                        for r in result["rows"] if r.get("train_input") == "images"}
        result["data_loading"] = dl
        write_json(result, out)
    return result


def _fmt(value, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _ckpt(train: dict) -> str:
    """Checkpointed / graph-building blocks of a training measurement ("no" without checkpointing)."""
    return f"{train['checkpointed_blocks']}/{train['graph_blocks']}" if train["checkpointed_blocks"] else "no"


def format_table(result: dict) -> str:
    """A Markdown table, one row per method, then the derived ratios."""
    head = ("method", "ckpt", "train img/s", "step ms", "peak GiB", "saved GiB", "TFLOP/s", "% peak", "GFLOP/img",
            "epoch min", "infer img/s", "infer TFLOP/s", "infer % peak")
    table = [head, ("---",) * len(head)]
    for r in result["rows"]:
        if "error" in r:
            table.append((r["method"], r["error"]) + ("",) * (len(head) - 2))
            continue
        t, i = r["train"], r.get("infer")
        table.append((
            r["method"] + (" (cached features)" if r["train_input"] == "cached features" else ""),
            _ckpt(t), _fmt(t["images_per_s"], ".1f"), _fmt(t["step_ms"], ".1f"),
            _fmt(t["peak_alloc_gib"], ".1f"),
            _fmt(t["saved_activation_gib"], ".2f"), _fmt(t["tflops"], ".2f"), _fmt(100 * t["frac_of_peak"], ".1f"),
            _fmt(t["gflop_per_image"], ".2f"),
            _fmt(t.get("epoch_minutes"), ".1f"), _fmt(i and i["images_per_s"], ".1f"), _fmt(i and i["tflops"], ".2f"),
            _fmt(i and 100 * i["frac_of_peak"], ".1f")))
    lines = ["| " + " | ".join(row) + " |" for row in table]
    lines.append("")
    for r in result["rows"]:
        if "cache" in r:
            c = r["cache"]
            lines.append(f"LP frozen-encoder pass (in every LP step): {c['images_per_s']:.1f} img/s, {c['tflops']:.2f} TFLOP/s "
                         f"({100 * c['frac_of_peak']:.1f}% of peak), {c['gflop_per_image']:.2f} GFLOP/img")
    trained = {r["method"]: r for r in result["rows"] if "train" in r}
    if "lora" in trained and "dora" in trained:
        dora, lora = trained["dora"]["train"], trained["lora"]["train"]
        lines.append(f"DoRA / LoRA step time: {dora['step_ms'] / lora['step_ms']:.2f}x" + (
            "" if dora["checkpointed_blocks"] == lora["checkpointed_blocks"] else
            f" (DoRA recomputes {dora['checkpointed_blocks']} blocks, LoRA {lora['checkpointed_blocks']}: "
            "compare the adapters on a run with --checkpoint-blocks off or all)"))
    dl = result["data_loading"]
    if dl:
        ratios = ", ".join(f"{x:.2f}x {m}" for m, x in dl["loader_over_train_rate"].items())
        lines.append(f"data loading ({dl['workers']} workers, {dl['image_size']} px): {dl['images_per_s']:.1f} img/s"
                     + (f" = {ratios} training rate" if ratios else ""))
    lines.append(f"{result['device']}, torch {result['torch']}, {result['config']}, {result['dtype']}, "
                 f"batch {result['batch']}, checkpoint blocks {result['checkpoint_blocks']}, "
                 f"measured bf16 matmul peak {result['peak_bf16_tflops']:.2f} TFLOP/s")
    return "\n".join(lines)


def write_json(result: dict, path: Path) -> None:
    atomic_write_text(path, json.dumps(result, indent=1))


def project_activations(small: dict, large: dict, batch: int) -> dict:
    """Saved activations at `batch` from two bench results (same config, dtype and checkpointing) taken at
    two smaller batches, e.g. on a CPU: per method, saved = fixed + per_image x batch through the two
    points (the activations grow with the batch; the fixed part is autocast's low-precision weight copies)."""
    same = ("config", "dtype", "checkpoint_blocks")
    if any(small[k] != large[k] for k in same) or small["batch"] == large["batch"]:
        raise InputError(f"project_activations needs two results that differ in batch only ({', '.join(same)}): "
                         f"got {[small[k] for k in same + ('batch',)]} and {[large[k] for k in same + ('batch',)]}")
    (b1, r1), (b2, r2) = sorted(((r["batch"], r) for r in (small, large)), key=lambda x: x[0])

    def trained(result):
        return {r["method"]: r for r in result["rows"] if "train" in r}

    t1, t2 = trained(r1), trained(r2)
    rows = []
    for method in (m for m in t1 if m in t2):
        s1, s2 = (t[method]["train"]["saved_activation_gib"] for t in (t1, t2))
        per_image = (s2 - s1) / (b2 - b1)
        fixed = s1 - per_image * b1
        train = t2[method]["train"]
        rows.append({"method": method, "per_image_mib": per_image * 1024, "fixed_gib": fixed,
                     "saved_gib": fixed + per_image * batch, "params": t2[method]["params"],
                     "trainable_params": t2[method]["trainable_params"],
                     **{k: train[k] for k in ("blocks", "graph_blocks", "checkpointed_blocks")}})
    return {**{k: small[k] for k in same}, "batch": batch, "from_batches": [b1, b2], "device": small["device"],
            "sources": [r1["command"], r2["command"]], "rows": rows,
            "note": "activations autograd keeps for backward (bench.SavedTensors), not the whole peak: add the "
                    "weights, gradients, AdamW state and the transient of the op running"
                    + (" and of the one block recomputed at a time" if any(r["checkpointed_blocks"] for r in rows)
                       else "")}


def _require_block_counts(measurements: dict, source: str) -> None:
    """Rows written before checkpointing became a number of blocks per method lack the block counts the
    plan and the wall-clock estimate read: say so instead of a bare KeyError."""
    old = [method for method, m in measurements.items() if "checkpointed_blocks" not in m]
    if old:
        raise InputError(f"{source}: no checkpointed_blocks for {', '.join(old)}: written by an older bench "
                         "(before --checkpoint-blocks counted blocks); run it again")


# --- how many blocks to checkpoint ------------------------------------------------------------------------
def plan_checkpointing(off: dict, every: dict, memory_gib: float, headroom: float) -> dict:
    """The fewest first blocks each method must checkpoint for its batch to fit a card of `memory_gib`, from
    two activation projections at that batch (`project_activations`): without checkpointing and with all.

    A graph-building block left un-checkpointed keeps (off - all) / graph_blocks more activations (the blocks
    are alike). On top of the activations come the fp32 weights (4 bytes per parameter) and each trainable
    parameter's gradient and two AdamW moments (12 bytes). `headroom`, a share of the card, is left for what
    the counts do not see: the allocator's fragmentation, the CUDA context and workspaces, the activation
    gradients of backward and the transient of the op running. Every block left un-checkpointed saves one
    block's forward recomputation per step. A GPU run with `--checkpoint-blocks profile` measures the peak.
    Which projection is which is read off the rows (none or every graph block checkpointed), so `0` and the
    number of blocks serve as well as `off` and `all`."""
    for projection in (off, every):
        _require_block_counts({r["method"]: r for r in projection["rows"]}, " + ".join(projection["sources"]))
    keys = ("config", "dtype", "batch")
    if any(off[k] != every[k] for k in keys) or any(r["checkpointed_blocks"] for r in off["rows"]) \
            or any(r["checkpointed_blocks"] != r["graph_blocks"] for r in every["rows"]):
        raise InputError("plan_checkpointing needs projections of one config, dtype and batch, the first without "
                         f"checkpointing and the second with every block: got {[off[k] for k in keys]} checkpointing "
                         f"{off['checkpoint_blocks']} and {[every[k] for k in keys]} checkpointing "
                         f"{every['checkpoint_blocks']}")
    usable = memory_gib * (1 - headroom)
    every_rows = {r["method"]: r for r in every["rows"]}
    rows = []
    for r in off["rows"]:
        a = every_rows.get(r["method"])
        if r["method"] not in METHODS or a is None:
            continue
        graph, blocks = r["graph_blocks"], r["blocks"]
        fixed = (4 * r["params"] + 12 * r["trainable_params"]) / 2**30
        if graph == 0:  # nothing builds a graph (LP, AP): checkpointing has nothing to free
            per_block, left = 0.0, 0
        else:
            per_block = (r["saved_gib"] - a["saved_gib"]) / graph
            if per_block <= 0:
                raise InputError(f"{r['method']}: checkpointing all {graph} graph blocks keeps {a['saved_gib']:.2f} GiB "
                                 f"of activations, not less than none ({r['saved_gib']:.2f} GiB): are the two "
                                 "projections of the same model?")
            left = min(graph, max(0, int((usable - fixed - a["saved_gib"]) // per_block)))
        saved = a["saved_gib"] + left * per_block
        rows.append({"method": r["method"], "checkpoint_blocks": 0 if left == graph else blocks - left,
                     "checkpointed_blocks": graph - left, "graph_blocks": graph, "per_block_gib": per_block,
                     "fixed_gib": fixed, "saved_gib": saved, "planned_gib": fixed + saved,
                     "fits": fixed + saved <= usable})
    return {"config": off["config"], "dtype": off["dtype"], "batch": off["batch"], "memory_gib": memory_gib,
            "headroom": headroom, "usable_gib": usable, "sources": off["sources"] + every["sources"], "rows": rows}


def format_plan(plan: dict) -> str:
    lines = [f"checkpointing plan for {plan['config']}, {plan['dtype']}, batch {plan['batch']} on "
             f"{plan['memory_gib']:.2f} GiB ({plan['usable_gib']:.2f} GiB after {plan['headroom']:.0%} headroom):",
             "| method | --checkpoint-blocks | checkpointed / graph blocks | GiB per block | weights + optimizer GiB "
             "| activations GiB | planned GiB |", "|---|---|---|---|---|---|---|"]
    for r in plan["rows"]:
        lines.append(f"| {r['method']} | {r['checkpoint_blocks']} | {r['checkpointed_blocks']} / {r['graph_blocks']} | "
                     f"{r['per_block_gib']:.2f} | {r['fixed_gib']:.2f} | {r['saved_gib']:.2f} | {r['planned_gib']:.2f}"
                     + ("" if r["fits"] else " (does not fit)") + " |")
    return "\n".join(lines)


# --- wall-clock of the full replication -----------------------------------------------------------------
def run_images(tasks: tuple[str, ...]) -> dict:
    """Images one run of `tasks` handles on the thesis's data (Table 3.2a): training draws per epoch (§3.2
    balanced sampling draws as many as there are labelled images; multi-task adds §3.7.2 emotion
    replication), the distinct training images, and the validation images (§2.7: an 80-20 split of each
    training set, so a quarter of the training images)."""
    labelled = TABLE_3_2_TASKS.value("total" if len(tasks) > 1 else tasks[0], "samples")
    draws = thesis_epoch_images() if len(tasks) > 1 else labelled
    return {"draws": draws, "train": labelled, "val": round(labelled / 4)}


def wall_clock(result: dict, epochs: tuple[int, ...]) -> dict:
    """Expected time of every training run of the full replication (`reproduce.training_runs()`) at the rates
    of one bench result, per run for each number of epochs in `epochs`.

    Per epoch: the run's training draws at its method's training-step rate, plus its validation images at the
    method's inference rate (merged model). LP trains on augmented images (§3.1), so every epoch runs the
    frozen encoder over its draws and its validation images at the measured caching-pass rate (the same
    forward without a graph), and the heads' step at its rate on cached features. The bench times the
    three-head model; the two heads a single-task run lacks are negligible (all three: 0.006 of the 384
    forward GFLOP per image on L14-336). Not included: waiting for data (`--data-loading` measures whether
    the loader keeps up), the test-set passes and the zero-shot baseline (one inference pass each). PFLOP
    are model FLOPs (`FLOP_CONVENTION`)."""
    rows_by_method = {r["method"]: r for r in result["rows"]}
    _require_block_counts({m: r["train"] for m, r in rows_by_method.items() if "train" in r}, result["command"])
    profile = get_profile("full")
    runs, missing, notes = [], set(), []
    for method, tasks, weighting in training_runs():
        row = rows_by_method.get(method)
        if row is None or "train" not in row:
            missing.add(method if row is None else f"{method} ({row['error']})")
            continue
        n, train, encoder = run_images(tasks), row["train"], row.get("cache")
        if encoder:  # LP: the frozen encoder on every draw and validation image, then the heads on the draws
            epoch_s = n["draws"] * (1 / encoder["images_per_s"] + 1 / train["images_per_s"]) + \
                n["val"] / encoder["images_per_s"]
            gflop = n["draws"] * (encoder["gflop_per_image"] + train["gflop_per_image"]) + \
                n["val"] * encoder["gflop_per_image"]
        else:
            epoch_s = n["draws"] / train["images_per_s"] + n["val"] / row["infer"]["images_per_s"]
            gflop = n["draws"] * train["gflop_per_image"] + n["val"] * row["infer"]["gflop_per_image"]
        runs.append({
            "method": method, "tasks": list(tasks), "weighting": weighting, **n,
            "checkpointed_blocks": train["checkpointed_blocks"], "graph_blocks": train["graph_blocks"],
            "epoch_s": epoch_s,
            "epoch_pflop": gflop / 1e6, "hours": {str(e): e * epoch_s / 3600 for e in epochs}})
    for method, row in sorted(rows_by_method.items()):
        if "train" not in row:
            continue
        measured = row["train"]["checkpointed_blocks"]
        trained = _checkpointed(profile.checkpoint_blocks.get(method, 0), row["train"]["blocks"],
                                row["train"]["graph_blocks"])
        if measured != trained:
            notes.append(f"{method} measured with {measured} checkpointed blocks; the full profile trains it "
                         f"with {trained}")
    if result["config"] != profile.model_config:
        notes.append(f"rates of {result['config']}; the full profile trains {profile.model_config}")
    if AMP[result["dtype"]] != profile.amp:
        notes.append(f"measured in {result['dtype']}; the full profile trains in {profile.amp}")
    if result["batch"] != profile.batch_size:
        notes.append(f"measured at batch {result['batch']}; the full profile trains at {profile.batch_size}")
    if missing:
        notes.append(f"not measured, so left out: {', '.join(sorted(missing))}")
    return {"device": result["device"], "source": result["command"], "date": result["date"],
            "config": result["config"], "dtype": result["dtype"], "batch": result["batch"],
            "epochs": list(epochs), "runs": runs, "notes": notes,
            "total_hours": {str(e): sum(r["hours"][str(e)] for r in runs) for e in epochs},
            "epoch_pflop": sum(r["epoch_pflop"] for r in runs)}


def format_wall_clock(estimate: dict) -> str:
    """A Markdown table, one row per training run, then the totals and the notes."""
    epochs = estimate["epochs"]
    head = ("run", "ckpt", "draws/epoch", "val images", "min/epoch", "PFLOP/epoch",
            *(f"h at {e} epochs" for e in epochs))
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in estimate["runs"]:
        name = f"{r['method']} {'-'.join(r['tasks'])}" + (f" {r['weighting']}" if r["weighting"] != "none" else "")
        cells = (name, _ckpt(r), f"{r['draws']:,}", f"{r['val']:,}",
                 f"{r['epoch_s'] / 60:.1f}", f"{r['epoch_pflop']:.1f}", *(f"{r['hours'][str(e)]:.1f}" for e in epochs))
        lines.append("| " + " | ".join(cells) + " |")
    totals = ", ".join(f"{estimate['total_hours'][str(e)]:.1f} h ({estimate['total_hours'][str(e)] / 24:.1f} days)"
                       f" at {e} epochs per run" for e in epochs)
    lines += ["", f"{len(estimate['runs'])} training runs: {totals}; one epoch of every run is "
                  f"{estimate['epoch_pflop']:.1f} PFLOP.",
              f"rates of {estimate['device']}, {estimate['config']}, {estimate['dtype']}, batch {estimate['batch']} "
              f"({estimate['date']}: {estimate['source']})"]
    lines += [f"note: {n}" for n in estimate["notes"]]
    return "\n".join(lines)


class InputError(ValueError):
    """A file given to --wall-clock, --project or --plan-checkpointing that is not what the option reads, or two
    that do not go together; the message names the file(s) and what was expected."""


_RESULT = ("the JSON a GPU `bench` run writes (e.g. benchmarks/results/<date>-<gpu>/profile.json), not the output "
           "of --project, --plan-checkpointing or --wall-clock")
# option -> (the keys its functions read from each file, what the file should be)
INPUTS = {
    "wall_clock": (("command", "date", "device", "config", "dtype", "batch", "rows"), _RESULT),
    "project": (("command", "device", "config", "dtype", "batch", "checkpoint_blocks", "rows"), _RESULT),
    "plan_checkpointing": (("sources", "config", "dtype", "batch", "checkpoint_blocks", "rows"),
                           "the JSON `bench --project SMALL.json LARGE.json --out FILE` writes"),
}


def read_input(path: Path, option: str) -> dict:
    """The JSON object in ``path`` given to ``--<option>`` (a key of INPUTS), with the keys it reads; anything
    else (no such file, a folder, an empty file, not JSON, another JSON) is an InputError naming the file and
    what was expected, instead of a traceback from inside (a KeyError, a JSONDecodeError without the file)."""
    keys, expected = INPUTS[option]

    def error(problem: str) -> InputError:
        return InputError(f"{path}: {problem}; expected {expected}")

    if path.is_dir():
        raise error("a folder")
    if not path.is_file():
        raise error("no such file")
    data = path.read_bytes()
    if not data.strip():
        raise error("the file is empty")
    try:
        result = json.loads(data)
    except ValueError as err:  # JSONDecodeError, or UnicodeDecodeError of a binary file
        raise error(f"not JSON ({err})") from None
    missing = [k for k in keys if k not in result] if isinstance(result, dict) else list(keys)
    if missing:
        raise error(f"no {', '.join(missing)}")
    return result


def _methods(text: str) -> list[str]:
    methods = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise argparse.ArgumentTypeError(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    return methods


def add_measurement_arguments(p: argparse.ArgumentParser) -> None:
    """The options of what is measured and how, shared with benchmarks/peft_compare.py."""
    p.add_argument("--batch", type=number(int, 2), default=128,
                   help="images per step (at least 2: the heads' BatchNorm trains on batches)")
    p.add_argument("--dtype", choices=AMP, default=get_profile("full").amp,
                   help="autocast dtype (fp32: no autocast); default: the full profile's")
    p.add_argument("--config", type=model_config, default="PE-Core-L14-336", help="model config measured")
    p.add_argument("--device", help="default: cuda (without a GPU, name the CPU explicitly: --device cpu)")
    p.add_argument("--steps", type=positive_int, default=20, help="timed steps per measurement (median reported)")
    p.add_argument("--warmup", type=number(int, 0), default=5, help="untimed steps before timing")
    p.add_argument("--checkpoint-blocks", type=_checkpoint_mode, default="off",
                   help="activation checkpointing of the first blocks: off, all, profile (as the full profile "
                        "trains each method) or a number of blocks")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (FLOPs counted eagerly)")
    p.add_argument("--fused-adamw", action="store_true", help="AdamW(fused=True) instead of the engine's default")


def check_measurement_arguments(p: argparse.ArgumentParser, args) -> None:
    """Stops on checkpointing beyond the model's blocks and on a missing GPU unless the CPU is asked for (the numbers
    are checked as they are parsed); sets args.device."""
    problem = args.checkpoint_blocks.isdecimal() and checkpoint_blocks_problem(int(args.checkpoint_blocks), args.config)
    if problem:
        p.error(f"{problem} ('all' checkpoints them all)")
    if args.device is None:
        # falling back to the CPU would run PE-Core-L14-336 for 10+ minutes and file its numbers in the
        # tracked benchmarks/results/ as if they were a GPU's
        if not torch.cuda.is_available():
            p.error("no GPU (CUDA is not available). On the CPU, ask for it explicitly, e.g. a smoke test: "
                    "--device cpu --config demo-tiny --batch 4 --steps 1 --warmup 0 --dtype fp32 --out /tmp/bench.json")
        args.device = "cuda"
    problem = distributed.device_problem(args.device)
    if problem:
        p.error(f"{problem}; pass --device cpu for a smoke test")


def cli(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(prog="python3 -m replication bench", description=__doc__.split("\n\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("--methods", type=_methods, default="lp,ap,ft4,lora,dora,mtlora", help="comma list of methods")
    add_measurement_arguments(p)
    p.add_argument("--data-loading", action="store_true", help="also time JPEG decode + augmentation")
    p.add_argument("--workers", type=number(int, 0), default=min(16, os.cpu_count() or 1), help="DataLoader workers")
    p.add_argument("--loader-images", type=positive_int, default=256, help="distinct synthetic JPEGs written")
    p.add_argument("--loader-batches", type=number(int, 0), default=0,
                   help="batches loaded (0: 4 x workers); the first max(workers, 1) are not timed")
    p.add_argument("--out", type=Path, default=None,
                   help="JSON path (default benchmarks/results/bench-<device>-<date-time>.json)")
    p.add_argument("--project", type=Path, nargs=2, metavar=("SMALL.json", "LARGE.json"),
                   help="measure nothing: project the saved activations of two results to --batch")
    p.add_argument("--plan-checkpointing", type=Path, nargs=2, metavar=("OFF.json", "ALL.json"),
                   help="measure nothing: the blocks each method must checkpoint to fit --memory-gib, from the "
                        "--project outputs without checkpointing and with all blocks checkpointed")
    p.add_argument("--memory-gib", type=number(float, 0, above=True), default=L40S_BYTES / 2**30,
                   help="card memory for --plan-checkpointing (default: the thesis's 48 GB L40S)")
    p.add_argument("--headroom", type=number(float, 0, 1), default=0.2,
                   help="share of the card --plan-checkpointing leaves for what the counts do not see")
    full = get_profile("full")
    p.add_argument("--wall-clock", type=Path, metavar="RESULT.json",
                   help="measure nothing: the full replication's training time at the rates of a result")
    p.add_argument("--epochs", type=positive_int, nargs="+", default=[full.patience + 1, full.max_epochs],
                   help="epochs per run for --wall-clock (default: the early-stopping minimum and the cap)")
    args = p.parse_args(argv)
    return reported("bench", lambda: _bench(p, args, argv), (OSError, InputError))


def _bench(p: argparse.ArgumentParser, args, argv: list[str]) -> int:
    """The measurement, or the computation on earlier results, that ``cli`` was asked for."""
    measuring = not (args.wall_clock or args.project or args.plan_checkpointing)
    if measuring:
        check_measurement_arguments(p, args)
    out = args.out or (result_path("bench", torch.device(args.device)) if measuring else None)
    if out:
        check_writable(out, "file")
    if args.wall_clock:
        estimate = wall_clock(read_input(args.wall_clock, "wall_clock"), tuple(args.epochs))
        print(format_wall_clock(estimate))
        if out:
            write_json(estimate, out)
        return 0
    if args.plan_checkpointing:
        plan = plan_checkpointing(*(read_input(f, "plan_checkpointing") for f in args.plan_checkpointing),
                                  memory_gib=args.memory_gib, headroom=args.headroom)
        print(format_plan(plan))
        if out:
            write_json(plan, out)
        return 0
    if args.project:
        projection = project_activations(*(read_input(f, "project") for f in args.project), batch=args.batch)
        print(f"saved activations at batch {args.batch} ({projection['config']}, {projection['dtype']}, "
              f"checkpoint blocks {projection['checkpoint_blocks']}), from batches {projection['from_batches']}:")
        for r in projection["rows"]:
            print(f"  {r['method']:10s} {r['per_image_mib']:8.1f} MiB/image + {r['fixed_gib']:.2f} GiB "
                  f"= {r['saved_gib']:6.1f} GiB")
        if out:
            write_json(projection, out)
        return 0
    result = run(args, argv, out)
    print(format_table(result))
    write_json(result, out)
    print(f"wrote {out}")
    return exit_status(result, "bench")
