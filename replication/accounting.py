"""Parameter counts and GFLOPs of every method, beside the thesis's figures (§3.3–3.6.1, Tables 4.3, 4.14).

`python3 -m replication counts [--json] [--config NAME]`. Models are built on the meta device (shapes only,
no weights, no memory), so the counts are those of the real PE-Core-L14-336 modules.

Which configuration each thesis figure was measured on, worked out from the numbers themselves:
* trainable counts of LP, AP, FT4 are *single-task* (age head, 9 classes): 1,058,825 = one deeper head
  without BN; AP adds the pooler and BN (13,656,073); FT4 adds 4 blocks (64,040,969).
* the totals, and the DoRA / MTLoRA trainable counts, are *multi-task* (3 BN heads, 18 classes) plus the
  3 uncertainty-weighting log-variances (§3.7.3) the thesis's model held as parameters.
* the MTLoRA trainable count leaves out the 23 task-agnostic DoRA magnitude vectors (mtlora.py).

GFLOPs of one 336x336 image are counted analytically from the config. The convention (FLOP_WEIGHTS):
2 FLOPs per multiply-accumulate of every weight matmul (nn.Linear, the patch conv, proj, the low-rank
adapter matmuls), 1 FLOP per output element of every normalisation (LayerNorm, BatchNorm) and of every
attention softmax; the activation-by-activation attention products (QK^T, AV), GELU, RoPE and element-wise
adds are not counted. Under it the zero-shot pipeline (image + 18 text prompts of 32 tokens) gives the
thesis's zero-shot figure to two decimals; the notes of `counts` also give the plain "2 x weight MACs" and
the FlopCounterMode-style "2 x all MACs, attention products included" totals.
tests/test_accounting.py checks the matmul part against torch.utils.flop_counter.FlopCounterMode.
No single convention reproduces both the zero-shot and the FT4 figures of the thesis: zero-shot minus FT4
(the 18 prompts minus the heads) is smaller there than the 18 prompts' weight matmuls alone (see the note).
"""
from __future__ import annotations

import argparse
import json
from collections import Counter
from collections.abc import Sequence

import torch

from . import thesis
from .arguments import HelpFormatter, model_config
from .config import CLIPConfig, TextConfig, VisionConfig, get_config
from .labels import NUM_CLASSES, TASKS
from .lora import adapter_parameters
from .losses import UncertaintyWeighting
from .methods import build_method
from .pe import CLIP, VisionTransformer

ALL_TASKS = tuple(TASKS)
SINGLE_TASK = ("age",)  # the §3.3–3.5 trainable counts are those of the age model (9 classes)
N_PROMPTS = sum(NUM_CLASSES.values())  # 18 zero-shot prompts (§4.2): 9 age + 2 gender + 7 emotion

# The thesis numbers compared against. They live in replication.thesis (the one store of published numbers);
# this dict only maps the `counts` figure IDs onto it.
THESIS_FIGURES: dict[str, float] = {
    "table4.3/text_encoder": thesis.TABLE_4_3.value("text_encoder", "value"),
    "table4.3/visual_encoder": thesis.TABLE_4_3.value("visual_encoder", "value"),
    "table4.3/total": thesis.TABLE_4_3.value("total", "value"),
    "s3.3/lp_trainable": thesis.PARAMS.value("lp", "trainable"),
    "s3.3/lp_total": thesis.PARAMS.value("lp", "total"),
    "s3.4/ap_trainable": thesis.PARAMS.value("ap", "trainable"),
    "s3.4/ap_total": thesis.PARAMS.value("ap", "total"),
    "s3.5/ft4_trainable": thesis.PARAMS.value("ft4", "trainable"),
    "s3.5/ft4_total": thesis.PARAMS.value("ft4", "total"),
    "s3.6/dora_trainable": thesis.PARAMS.value("dora", "trainable"),
    "s3.6/dora_total": thesis.PARAMS.value("dora", "total"),
    "s3.6.1/mtlora_trainable": thesis.PARAMS.value("mtlora", "trainable"),
    "s3.6.1/mtlora_total": thesis.PARAMS.value("mtlora", "total"),
    "table4.3/gflops_zero_shot": thesis.TABLE_4_3.value("gflops", "value"),
    "table4.14/gflops_ft4": thesis.TABLE_4_14.value("ft4", "gflops"),
    "table4.14/gflops_dora_merged": thesis.TABLE_4_14.value("dora_merged", "gflops"),
    "table4.14/gflops_mtlora": thesis.TABLE_4_14.value("mtlora", "gflops"),
}

# ---------------------------------------------------------------------------------------------------
# Parameter counts


def _n(params) -> int:
    return sum(p.numel() for p in params)


def uw_parameters(tasks: Sequence[str]) -> int:
    """The uncertainty-weighting log-variances (one per task) — parameters of the loss, counted by the thesis."""
    return _n(UncertaintyWeighting(tasks).parameters()) if len(tasks) > 1 else 0


def _meta_vision(config: str) -> VisionTransformer:
    with torch.device("meta"):  # shapes only: the L14-336 tower costs no memory
        return VisionTransformer(get_config(config).vision)


def method_counts(method: str, tasks: Sequence[str], config: str = "PE-Core-L14-336", **build) -> tuple[int, int]:
    """(trainable, total) parameters of `method` for `tasks`, UW log-variances included when multi-task;
    ``build`` goes to methods.build_method (e.g. mtlora_train_magnitude=True)."""
    adapted = build_method(method, tasks, _meta_vision(config), **build)
    extra = uw_parameters(tasks)
    return adapted.trainable_parameters() + extra, adapted.total_parameters() + extra


def inference_parameters(config: str = "PE-Core-L14-336") -> dict[str, int]:
    """Parameters of the deployed three-task models (Table 4.14's "Params"): LoRA/DoRA merged into the weights,
    MTLoRA with its task-agnostic DoRA merged (its task-specific LoRA cannot be); no loss parameters.
    Table 4.14 prints millions truncated: MTLoRA's 329 is this count's 329.76 M."""
    counts = {"zs": clip_counts(config)["total"]}
    for method in ("ft4", "dora", "mtlora"):
        model = build_method(method, ALL_TASKS, _meta_vision(config)).model
        folded = _n(adapter_parameters(model))  # A, B (and m) disappear into the merged weights
        counts["dora_merged" if method == "dora" else method] = _n(model.parameters()) - folded
    return counts


def clip_counts(config: str = "PE-Core-L14-336") -> dict[str, int]:
    """Parameters of the CLIP model: vision tower, text tower (+ logit_scale, as Table 4.3), total."""
    with torch.device("meta"):
        clip = CLIP(get_config(config))
    total, vision = _n(clip.parameters()), _n(clip.visual.parameters())
    return {"vision": vision, "text": total - vision, "total": total}


# ---------------------------------------------------------------------------------------------------
# Operation counts (analytic). Each function returns a Counter of:
#   mac      multiply-accumulates of weight matmuls (Linear, conv, proj, adapters)
#   attn_mac multiply-accumulates of the attention products QK^T and AV
#   norm     output elements of LayerNorm / BatchNorm
#   softmax  attention probabilities (output elements of softmax)

FLOP_WEIGHTS = {"mac": 2, "attn_mac": 0, "norm": 1, "softmax": 1}
MATMUL_WEIGHTS = {"mac": 2, "attn_mac": 2, "norm": 0, "softmax": 0}  # what FlopCounterMode counts
WEIGHT_MAC_WEIGHTS = {"mac": 2, "attn_mac": 0, "norm": 0, "softmax": 0}  # the plain "2 x weight MACs"


def _times(ops: Counter, k: int) -> Counter:
    return Counter({name: v * k for name, v in ops.items()})


def flops(ops: Counter, weights: dict[str, int] = FLOP_WEIGHTS) -> int:
    return sum(weights[k] * v for k, v in ops.items())


def _linear(tokens: int, d_in: int, d_out: int, rank: int = 0) -> Counter:
    """One linear layer on `tokens` rows, plus a rank-r adapter's two thin matmuls if rank > 0."""
    return Counter(mac=tokens * d_in * d_out + tokens * rank * (d_in + d_out))


def _attention(q_tokens: int, kv_tokens: int, width: int, heads: int) -> Counter:
    return Counter(attn_mac=2 * q_tokens * kv_tokens * width, softmax=heads * q_tokens * kv_tokens)


def block_ops(tokens: int, width: int, mlp: int, heads: int, rank: int = 0) -> Counter:
    """One pre-LN transformer block (ln_1, q|k|v, attention, out_proj, ln_2, MLP)."""
    return (Counter(norm=2 * tokens * width)
            + _times(_linear(tokens, width, width, rank), 3)  # q, k, v (fused or split: same count)
            + _attention(tokens, tokens, width, heads)
            + _linear(tokens, width, width, rank)
            + _linear(tokens, width, mlp, rank) + _linear(tokens, mlp, width, rank))


def pool_ops(tokens: int, width: int, heads: int, rank: int = 0) -> Counter:
    """PE's attention pooling: one probe query over all tokens, then layernorm + MLP (width 4*width)."""
    return (_linear(1, width, width, rank) + _times(_linear(tokens, width, width, rank), 2)
            + _attention(1, tokens, width, heads) + _linear(1, width, width, rank)
            + Counter(norm=width) + _linear(1, width, 4 * width, rank) + _linear(1, 4 * width, width, rank))


def vision_stem_ops(cfg: VisionConfig) -> Counter:
    """Patch embedding (conv as a matmul per patch) and ln_pre."""
    patches = cfg.grid ** 2
    return Counter(mac=patches * 3 * cfg.patch_size ** 2 * cfg.width, norm=_tokens(cfg) * cfg.width)


def _tokens(cfg: VisionConfig) -> int:
    return cfg.grid ** 2 + int(cfg.use_cls_token)


def vision_ops(cfg: VisionConfig) -> Counter:
    """The whole vision tower for one image: stem, blocks, ln_post, pooling, proj."""
    n, w = _tokens(cfg), cfg.width
    ops = vision_stem_ops(cfg) + _times(block_ops(n, w, cfg.mlp_dim, cfg.heads), cfg.layers)
    return ops + Counter(norm=n * w) + pool_ops(n, w, cfg.pool_heads) + _linear(1, w, cfg.output_dim)


def text_ops(cfg: TextConfig, prompts: int) -> Counter:
    """The text tower on `prompts` prompts padded to the context length (32): blocks, ln_final, projection."""
    t, w = cfg.context_length, cfg.width
    one = _times(block_ops(t, w, cfg.mlp_dim, cfg.heads), cfg.layers) + Counter(norm=t * w) + _linear(1, w, cfg.output_dim)
    return _times(one, prompts)


def heads_ops(dim: int, tasks: Sequence[str], use_bn: bool = True) -> Counter:
    """The deeper heads (BN -> Linear(d, d) -> GELU -> Linear(d, C)) of every task, one image."""
    ops = Counter()
    for t in tasks:
        ops += Counter(norm=dim * use_bn) + _linear(1, dim, dim) + _linear(1, dim, NUM_CLASSES[t])
    return ops


def mtlora_ops(cfg: VisionConfig, tasks: Sequence[str], rank: int = 64) -> Counter:
    """MTLoRA at inference: TA-DoRA merged (plain blocks 1..L-1), then per task block L and the task pooling
    with their unmerged TS-LoRA matmuls, ln_post per stream, no proj, and the heads (on width)."""
    n, w = _tokens(cfg), cfg.width
    shared = vision_stem_ops(cfg) + _times(block_ops(n, w, cfg.mlp_dim, cfg.heads), cfg.layers - 1)
    per_task = block_ops(n, w, cfg.mlp_dim, cfg.heads, rank) + Counter(norm=n * w) + pool_ops(n, w, cfg.pool_heads, rank)
    return shared + _times(per_task, len(tasks)) + heads_ops(w, tasks)


def gflops(config: str | CLIPConfig = "PE-Core-L14-336", weights: dict[str, int] = FLOP_WEIGHTS) -> dict[str, float]:
    """GFLOPs of one image for the Table 4.3 / 4.14 pipelines (multi-task heads where there are heads)."""
    cfg = get_config(config)
    v = cfg.vision
    plain = vision_ops(v) + heads_ops(v.output_dim, ALL_TASKS)  # FT4 and merged DoRA: same graph
    return {
        "zero_shot": flops(vision_ops(v) + text_ops(cfg.text, N_PROMPTS), weights) / 1e9,
        "ft4": flops(plain, weights) / 1e9,
        "dora_merged": flops(plain, weights) / 1e9,
        "mtlora": flops(mtlora_ops(v, ALL_TASKS), weights) / 1e9,
    }


# ---------------------------------------------------------------------------------------------------
# The comparison table


def _fmt(x: float) -> str:
    return f"{x:,.2f}" if isinstance(x, float) and not float(x).is_integer() else f"{int(x):,}"


def rows(config: str = "PE-Core-L14-336") -> list[dict]:
    """[{"figure", "thesis", "replicated", "note"}] for every parameter/GFLOPs figure of the thesis."""
    clip = clip_counts(config)
    counts = ({(m, "single"): method_counts(m, SINGLE_TASK, config) for m in ("lp", "ap", "ft4")}
              | {(m, "multi"): method_counts(m, ALL_TASKS, config) for m in ("lp", "ap", "ft4", "dora", "mtlora")})
    lp_multi_no_bn = counts["lp", "multi"][1]
    ap_multi = counts["ap", "multi"][1]
    mt_train_m = method_counts("mtlora", ALL_TASKS, config, mtlora_train_magnitude=True)[0]
    g = gflops(config)
    g_plain = gflops(config, WEIGHT_MAC_WEIGHTS)
    g_matmul = gflops(config, MATMUL_WEIGHTS)
    cfg = get_config(config)
    text_plain = flops(text_ops(cfg.text, N_PROMPTS), WEIGHT_MAC_WEIGHTS) / 1e9
    thesis_gap = THESIS_FIGURES["table4.3/gflops_zero_shot"] - THESIS_FIGURES["table4.14/gflops_ft4"]
    v = cfg.vision
    block_l = flops(block_ops(_tokens(v), v.width, v.mlp_dim, v.heads, rank=64)) / 1e9
    uw = uw_parameters(ALL_TASKS)
    single_log_variances = _n(UncertaintyWeighting(SINGLE_TASK).parameters())
    multi = f"three tasks (age 9 + gender 2 + emotion 7 classes), BN deeper heads, + {uw} UW log-variances"
    r = [
        ("table4.3/text_encoder", clip["text"], "text tower + logit_scale (Meta's CLIP parameters minus visual)"),
        ("table4.3/visual_encoder", counts["ap", "single"][1] + single_log_variances,
         f"read as the single-task age model's total, counted as every thesis total is: vision tower "
         f"({clip['vision']:,}, what the thesis's Total row adds up) + BN deeper age head + "
         f"{single_log_variances} uncertainty log-variance; the thesis's AP and FT4 percentages divide by "
         f"this same figure (README, Model accounting)"),
        ("table4.3/total", clip["total"], "vision tower + text tower + logit_scale"),
        ("s3.3/lp_trainable", counts["lp", "single"][0], "single-task age head, no BN: 1024*1024+1024 + 1024*9+9"),
        ("s3.3/lp_total", ap_multi,
         f"as every §3.3–3.5 total: vision tower + {multi}. LP's own three heads have no BN (§3.4 adds it from "
         f"AP on), which would give {lp_multi_no_bn:,}"),
        ("s3.4/ap_trainable", counts["ap", "single"][0],
         "attention pooling (12,595,200) + single-task age BN head; proj and ln_post frozen"),
        ("s3.4/ap_total", ap_multi, f"vision tower + {multi}"),
        ("s3.5/ft4_trainable", counts["ft4", "single"][0],
         "last 4 blocks (4 x 12,596,224) + pooling + single-task age BN head; proj and ln_post frozen"),
        ("s3.5/ft4_total", counts["ft4", "multi"][1], f"vision tower + {multi}"),
        ("s3.6/dora_trainable", counts["dora", "multi"][0],
         f"DoRA r=64 on in_proj/out_proj/c_fc/c_proj of 24 blocks + pool out_proj/c_fc/c_proj (A, B and "
         f"magnitudes), {multi}"),
        ("s3.6/dora_total", counts["dora", "multi"][1], f"vision tower + adapters + {multi}"),
        ("s3.6.1/mtlora_trainable", counts["mtlora", "multi"][0],
         f"TA-DoRA A/B of 23 blocks, TS-LoRA (3 tasks + the zero-scaled shared pair) on block 24's q/k/v/o/fc/proj "
         f"and the task pooling's, 3 probes, {multi}; the 23 TA magnitude vectors are frozen: training them too "
         f"gives {mt_train_m:,} (+23 x 9,216)"),
        ("s3.6.1/mtlora_total", counts["mtlora", "multi"][1],
         f"blocks 1–23 + DoRA, rebuilt block 24 + TS-LoRA, task pooling, ln_post, proj (unused, counted), {multi}"),
        ("table4.3/gflops_zero_shot", round(g["zero_shot"], 2),
         f"one image + {N_PROMPTS} prompts x 32 tokens; convention in accounting.py (2 x weight MACs + "
         f"LayerNorm/softmax elements); weight MACs only: {g_plain['zero_shot']:.2f}, with attention products: "
         f"{g_matmul['zero_shot']:.2f}"),
        ("table4.14/gflops_ft4", round(g["ft4"], 2),
         f"vision tower + 3 BN heads, same convention (weight MACs only: {g_plain['ft4']:.2f}, with attention "
         f"products: {g_matmul['ft4']:.2f}). The thesis's zero-shot minus FT4 ({thesis_gap:.2f}) is less than the "
         f"{N_PROMPTS} prompts' weight matmuls alone ({text_plain:.2f}): no convention that counts the same "
         f"operations the same way in both pipelines gives both thesis figures"),
        ("table4.14/gflops_dora_merged", round(g["dora_merged"], 2), "merged DoRA = the plain tower + heads"),
        ("table4.14/gflops_mtlora", round(g["mtlora"], 2),
         "TA merged; block 24, ln_post and the task pooling run once per task (3x) with TS-LoRA matmuls; "
         f"no proj (weight MACs only: {g_plain['mtlora']:.2f}). The thesis's MTLoRA - DoRA "
         f"({THESIS_FIGURES['table4.14/gflops_mtlora'] - THESIS_FIGURES['table4.14/gflops_dora_merged']:.2f}) "
         f"is about one extra block with rank-64 LoRA ({block_l:.2f} here), not three task streams"),
    ]
    return [{"figure": fid, "thesis": THESIS_FIGURES[fid], "replicated": rep, "note": note} for fid, rep, note in r]


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m replication counts",
                                     description="Parameter counts and GFLOPs, thesis vs replicated (meta device).",
                                     formatter_class=HelpFormatter)
    parser.add_argument("--json", action="store_true", help="print a JSON list of {figure, thesis, replicated, note}")
    parser.add_argument("--config", type=model_config, default="PE-Core-L14-336", help="model config counted")
    args = parser.parse_args(argv)
    table = rows(args.config)
    if args.json:
        print(json.dumps(table, indent=1))
        return 0
    width = max(len(r["figure"]) for r in table)
    print(f"{'figure':<{width}}  {'thesis':>13}  {'replicated':>13}  match")
    for r in table:
        match = "yes" if abs(r["replicated"] - r["thesis"]) < 0.005 else "no"
        print(f"{r['figure']:<{width}}  {_fmt(r['thesis']):>13}  {_fmt(r['replicated']):>13}  {match}")
    print("\nnotes:")
    for r in table:
        print(f"- {r['figure']}: {r['note']}")
    return 0
