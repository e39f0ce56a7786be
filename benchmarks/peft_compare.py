"""This project's LoRA and DoRA against peft's, wrapped around the same encoder, timed in one process.

    python3 benchmarks/peft_compare.py [--batch 128] [--dtype fp16] [--checkpoint-blocks off|all|profile|N] [...]

Ours are `bench`'s own rows (`bench.bench_method`, the engine's training step only: peft's rows have no
merged inference to compare with, and `bench` times ours). peft's LoRA and DoRA (`use_dora=True`) are
injected at the very modules ours adapt, with our adapters' rank, alpha and dropout, in the same TaskModel
(heads, BatchNorm), and timed with the same training step at the same batch, dtype and checkpointing. Prints bench's table (ours and peft's rows side by
side) and the ours / peft training speed per adapter; writes JSON shaped like bench's (device, torch and peft
versions, date, command), so `bench --project` reads it too. peft stays out of replication/: the library's
methods are written by hand, and peft serves only as a reference (benchmarks/README.md).
"""
from __future__ import annotations

import argparse
import functools
import shlex
import sys
from pathlib import Path

import peft
import torch

# run as a script, the repository root is not on the path: find this checkout's replication, installed or not
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from replication import bench  # noqa: E402
from replication.arguments import HelpFormatter, reported  # noqa: E402
from replication.engine import build_model  # noqa: E402
from replication.files import check_writable  # noqa: E402
from replication.lora import adapter_modules  # noqa: E402

ADAPTERS = ("lora", "dora")
COMMAND = ("python3", "benchmarks/peft_compare.py")


def _as_linear(adapter) -> torch.nn.Linear:
    """The plain nn.Linear under one of our adapters, sharing its weight and bias Parameters."""
    linear = torch.nn.Linear(adapter.in_features, adapter.out_features, bias=adapter.bias is not None,
                             device="meta")
    linear.weight, linear.bias = adapter.weight, adapter.bias
    return linear


def bench_peft(method: str, args, device: torch.device, peak: float) -> dict:
    """peft's LoRA/DoRA (use_dora) on the very modules our `method` adapts; same heads, batch, dtype, step.

    Our TaskModel is built as usual, every adapter is replaced by its base nn.Linear, and peft injects its
    own adapter there with the same rank, alpha and dropout. Heads and BatchNorm stay trainable; all of
    peft's adapter tensors train at the backbone learning rate (speed does not depend on it)."""
    cfg = bench.train_config(method, args)
    adapted = build_model(cfg)
    model = adapted.model
    adapters = list(adapter_modules(model))
    first = adapters[0][1]
    for name, adapter in adapters:
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, _as_linear(adapter))
    keep = {n for n, p in model.named_parameters() if p.requires_grad}  # heads, BatchNorm
    config = peft.LoraConfig(r=first.rank, lora_alpha=first.alpha, target_modules=[n for n, _ in adapters],
                             lora_dropout=getattr(first.dropout, "p", 0.0), use_dora=method == "dora")
    model = peft.inject_adapter_in_model(config, model)
    for n, p in model.named_parameters():
        p.requires_grad_(n in keep or "lora_" in n)
    model = model.to(device).train()
    images, targets = bench.synthetic_batch(args.batch, bench.model_image_size(args.config), device)

    def groups(weighting):
        return [{"params": [p for p in model.parameters() if p.requires_grad], "lr": cfg.lr_backbone,
                 "weight_decay": cfg.weight_decay},
                {"params": list(weighting.parameters()), "lr": cfg.lr_head, "weight_decay": 0.0}]

    step = bench.Step(cfg, adapted, model, device, cached=False, fused_adamw=args.fused_adamw, groups=groups)
    return {"method": f"peft-{method}", "target_modules": len(adapters), **bench.param_counts(model),
            "train_input": "images", "train": step.measure(images, targets, args, device, peak)}


def compare(args, argv: list[str], out: Path) -> dict:
    """Ours then peft's, per adapter, as bench's result dict, rewritten to `out` after each measurement (a run
    cut short keeps what it measured; the caller writes the last ratio)."""
    device, result = bench.start_result(args, shlex.join([*COMMAND, *argv]))
    result.update(peft=peft.__version__, ours_over_peft_speed={})
    for method in ADAPTERS:
        # ours without the merged inference: the comparison is of training steps, and `bench` times inference
        ours = functools.partial(bench.bench_method, infer=False)
        for label, measure in ((method, ours), (f"peft-{method}", bench_peft)):
            result["rows"].append(bench.guarded(label, args.batch, measure, method, args, device,
                                                result["peak_bf16_tflops"]))
            bench.reset_memory(device)
            bench.write_json(result, out)
        ours, theirs = result["rows"][-2:]
        if "train" in ours and "train" in theirs:
            result["ours_over_peft_speed"][method] = ours["train"]["images_per_s"] / theirs["train"]["images_per_s"]
    return result


def format_comparison(result: dict) -> str:
    """bench's table of the four rows, then ours / peft training speed per adapter."""
    rows = {r["method"]: r for r in result["rows"]}

    def rate(method):
        row = rows[method]
        return f"{row['train']['images_per_s']:.1f}" if "train" in row else row["error"]

    lines = [bench.format_table(result), "", f"ours / peft (peft {result['peft']}), training step:",
             "| adapter | ours img/s | peft img/s | ours / peft speed |", "|---|---|---|---|"]
    for method in ADAPTERS:
        ratio = result["ours_over_peft_speed"].get(method)
        lines.append(f"| {method} | {rate(method)} | {rate(f'peft-{method}')} | "
                     + ("n/a" if ratio is None else f"{ratio:.2f}x") + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(prog=" ".join(COMMAND), description=__doc__.split("\n\n")[0],
                                formatter_class=HelpFormatter)
    bench.add_measurement_arguments(p)
    p.add_argument("--out", type=Path, default=None,
                   help="JSON path (default benchmarks/results/peft-<device>-<date-time>.json)")
    args = p.parse_args(argv)
    bench.check_measurement_arguments(p, args)
    out = args.out or bench.result_path("peft", torch.device(args.device))
    return reported("peft_compare", lambda: _compare_and_write(args, argv, out), (OSError,))


def _compare_and_write(args, argv: list[str], out: Path) -> int:
    check_writable(out, "file")  # before the measurements, which a path that cannot be written would lose
    result = compare(args, argv, out)
    print(format_comparison(result))
    bench.write_json(result, out)
    print(f"wrote {out}")
    return bench.exit_status(result, "peft_compare")


if __name__ == "__main__":
    sys.exit(main())
