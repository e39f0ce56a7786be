"""The thesis's simplified MTLoRA (§3.6.1), after Agiza et al. 2024 ("MTLoRA: A Low-Rank Adaptation
Approach for Efficient Multi-Task Learning").

MTLoRA mixes task-agnostic adapters (TA-LoRA, shared by all tasks) with task-specific ones (TS-LoRA, one
per task). The thesis keeps TS adapters only at the end of the network:

* blocks 1..23: TA adapters = one set of DoRA weights, rank 64, as in §3.6 (lora.DoRALinear);
* block 24 is rebuilt with separate Q, K, V, O and MLP linears (its fused q|k|v split in three) carrying
  a TS-LoRA pair per task, so every task gets its own token stream out of block 24;
* ln_post is applied to each task stream (one shared, frozen LayerNorm);
* the attention pooling is replaced by a per-task version: one trainable probe per task and TS-LoRA on
  all its linears (its q/k/v split out of the fused in_proj, out_proj, MLP);
* one head per task reads its pooled vector, *without* `proj` (proj stays in the model, frozen, unused,
  and counted in the total, as in the thesis's code).

Two details come from the thesis's code (github.com/Antuke/PE_PEFT_FT: src/model.py, src/dlora.py) and its
own parameter counts (accounting.py checks both):
* each TS layer also holds a "shared" LoRA pair with scale 0 (MTLoRA's `shared_mode="matrix"` with
  `lora_shared_scale=0`; Fig. 3.3's caption: "we do not include the shared matrices"). It has no effect
  and gets no gradient, but it exists and was counted as trainable: 36,730,901 needs it.
* the thesis's MTLoRA count (36,730,901) is reached with the 23 TA-DoRA magnitude vectors frozen
  (23 x 9,216 = 211,968 fewer trainable values than with them trained), so they are frozen by default
  (`train_magnitude=False`); see accounting.py's note.

Where this differs from the thesis's code, on purpose: each task stream goes through block 24 with its own
input (W0 x_t + B_t A_t x_t); the thesis's MTLoRALinear computed the frozen W0 part on the discarded shared
stream (W0 x_shared + B_t A_t x_t), which only coincides for the first layers, and it also ran that shared
stream, whose output was thrown away. LoRA dropout applies to every TS adapter's input (the thesis's code
applied it only to the discarded shared stream).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .lora import (BLOCK_TARGETS, add_low_rank, adopt_frozen_base, inject_adapters, lora_dropout, lora_pair,
                   lora_scaling)
from .pe import attend


class TaskLoRALinear(nn.Module):
    """A frozen linear layer with one LoRA pair per task: y_t = W0 x_t + b + s B_t A_t dropout(x_t).

    `shared_a`/`shared_b` are the thesis code's zero-scaled shared pair (see module docstring): they are
    parameters, never used in the forward pass, kept because the thesis's MTLoRA count includes them.
    """

    def __init__(self, base: nn.Linear, tasks: Sequence[str], rank: int = 64, alpha: float | None = None,
                 dropout: float = 0.0):
        super().__init__()
        adopt_frozen_base(self, base)
        self.tasks = tuple(tasks)
        self.rank, self.scaling = rank, lora_scaling(rank, alpha)
        pairs = {t: lora_pair(self, rank) for t in self.tasks}  # random draws: each task's A, then the shared A
        self.lora_a = nn.ParameterDict({t: a for t, (a, _) in pairs.items()})
        self.lora_b = nn.ParameterDict({t: b for t, (_, b) in pairs.items()})
        self.shared_a, self.shared_b = lora_pair(self, rank)
        self.dropout = lora_dropout(dropout)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, "
                f"tasks={self.tasks}")

    def forward(self, x: torch.Tensor, task: str) -> torch.Tensor:
        return add_low_rank(F.linear(x, self.weight, self.bias), self.dropout(x), self.lora_a[task],
                            self.lora_b[task], self.scaling)


def _split_linear(weight: torch.Tensor, bias: torch.Tensor) -> list[nn.Linear]:
    """Split a fused q|k|v projection (3C, C) into three nn.Linear(C, C) with copied weights."""
    width = weight.shape[1]
    layers = []
    for w, b in zip(weight.detach().chunk(3), bias.detach().chunk(3)):
        layer = nn.Linear(width, width, device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            layer.weight.copy_(w)
            layer.bias.copy_(b)
        layers.append(layer)
    return layers


class TaskLoRABlock(nn.Module):
    """The last transformer block rebuilt for task streams (§3.6.1): {task: x} -> {task: block_t(x)}."""

    def __init__(self, block: nn.Module, tasks: Sequence[str], rank: int = 64, alpha: float | None = None,
                 dropout: float = 0.0):
        super().__init__()
        self.tasks = tuple(tasks)
        self.heads, self.rope, self.causal = block.attn.heads, block.attn.rope, block.attn.causal
        kw = dict(tasks=tasks, rank=rank, alpha=alpha, dropout=dropout)
        self.ln_1, self.ln_2 = block.ln_1, block.ln_2
        q, k, v = _split_linear(block.attn.in_proj.weight, block.attn.in_proj.bias)
        self.q, self.k, self.v = (TaskLoRALinear(layer, **kw) for layer in (q, k, v))
        self.out_proj = TaskLoRALinear(block.attn.out_proj, **kw)
        self.c_fc = TaskLoRALinear(block.mlp.c_fc, **kw)
        self.c_proj = TaskLoRALinear(block.mlp.c_proj, **kw)

    def _attn(self, x: torch.Tensor, task: str) -> torch.Tensor:
        out = attend(self.q(x, task), self.k(x, task), self.v(x, task), self.heads, self.rope, self.causal)
        return self.out_proj(out, task)

    def forward(self, xs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {}
        for t in self.tasks:
            x = xs[t] + self._attn(self.ln_1(xs[t]), t)
            out[t] = x + self.c_proj(F.gelu(self.c_fc(self.ln_2(x), t)), t)
        return out


class TaskAttentionPooling(nn.Module):
    """Per-task attention pooling (§3.6.1): one probe per task, TS-LoRA on q/k/v/out and the MLP.

    Same computation as PE's pooler for each task t: x = attn(probe_t, tokens_t); x + mlp(layernorm(x)).
    """

    def __init__(self, pool: nn.Module, tasks: Sequence[str], rank: int = 64, alpha: float | None = None,
                 dropout: float = 0.0):
        super().__init__()
        self.tasks = tuple(tasks)
        self.heads = pool.attn.heads
        kw = dict(tasks=tasks, rank=rank, alpha=alpha, dropout=dropout)
        self.probe = nn.ParameterDict({t: nn.Parameter(pool.probe.detach().clone()) for t in self.tasks})
        q, k, v = _split_linear(pool.attn.in_proj_weight, pool.attn.in_proj_bias)
        self.q, self.k, self.v = (TaskLoRALinear(layer, **kw) for layer in (q, k, v))
        self.out_proj = TaskLoRALinear(pool.attn.out_proj, **kw)
        self.layernorm = pool.layernorm
        self.c_fc = TaskLoRALinear(pool.mlp.c_fc, **kw)
        self.c_proj = TaskLoRALinear(pool.mlp.c_proj, **kw)

    def forward(self, xs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {}
        for t in self.tasks:
            x = xs[t]
            probe = self.probe[t].expand(x.shape[0], -1, -1).to(x.dtype)
            y = self.out_proj(attend(self.q(probe, t), self.k(x, t), self.v(x, t), self.heads), t)
            y = y + self.c_proj(F.gelu(self.c_fc(self.layernorm(y), t)), t)
            out[t] = y.squeeze(1)
        return out


class MTLoRAEncoder(nn.Module):
    """images -> {task: (B, width) pooled feature} (§3.6.1). Takes over `vision` and edits it in place:
    TA-DoRA on blocks 0..L-2, the last block and the attention pooling replaced by their task versions."""

    def __init__(self, vision: nn.Module, tasks: Sequence[str], rank: int = 64, alpha: float | None = None,
                 dropout: float = 0.0, train_magnitude: bool = False):
        super().__init__()
        if not tasks:
            raise ValueError("MTLoRA needs at least one task")
        self.tasks = tuple(tasks)
        vision.requires_grad_(False)
        blocks = vision.transformer.resblocks
        self.block = TaskLoRABlock(blocks[-1], tasks, rank, alpha, dropout)
        # Meta's truncate(layer_idx=L-2): the backbone keeps blocks 0..L-2 and no pooler.
        vision.transformer.resblocks = nn.ModuleList(blocks[:-1])
        self.pool = TaskAttentionPooling(vision.attn_pool, tasks, rank, alpha, dropout)
        del vision.attn_pool
        names = [f"transformer.resblocks.{i}.{n}" for i in range(len(blocks) - 1) for n in BLOCK_TARGETS]
        inject_adapters(vision, names, "dora", rank=rank, alpha=alpha, dropout=dropout)
        for name, p in vision.named_parameters():
            if name.endswith(".magnitude"):
                p.requires_grad_(train_magnitude)
        self.vision = vision

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        # ln_post is applied per task stream, after block L (thesis code: forward_features(norm=False))
        x = self.vision.forward_features(images, norm=False)
        xs = self.block({t: x for t in self.tasks})
        return self.pool({t: self.vision.ln_post(xs[t]) for t in self.tasks})
