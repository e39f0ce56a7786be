"""Adaptation methods of the thesis (§3.3–3.6.1): which parameters train, with which learning rate.

    lp      linear probing (§3.3): frozen encoder, deeper heads without BatchNorm, lr 1e-4
    ap      attention probing (§3.4): + the attention pooling trains; BN heads; lr 1e-4
    ft4     partial fine-tuning (§3.5): + the last 4 blocks at 1e-5; pooling and heads at 1e-4
    lora    LoRA on every linear of the 24 blocks and of the pooler (§3.6), rank 64, alpha = r
    dora    the same with DoRA (Liu et al. 2024)
    mtlora  the thesis's MTLoRA (§3.6.1, mtlora.py)

Heads read the *projected* embedding (`vision(x)`, 1024-d, proj included) for every method but MTLoRA,
whose per-task pooled vectors skip proj. What trains and at which rate follows the thesis text and, where
the text is silent, the thesis's own parameter counts (accounting.py):
* AP/FT4: `proj` and `ln_post` stay frozen (13,656,073 = pooler + one BN head; 64,040,969 = that + 4 blocks).
* LoRA/DoRA, LoRA+ (Hayou et al. 2024, "LoRA+: Efficient Low Rank Adaptation of Large Models"):
  backbone A matrices at lr_backbone (1e-5), backbone B matrices at loraplus_ratio x that (6e-5);
  DoRA magnitudes with the A matrices (lr_backbone), as the thesis's code grouped them.
  The pooler's adapters (A, B, m) train at lr_head (1e-4) without the LoRA+ ratio: §3.6 sets "to 1e-4
  the learning rate for the LoRA matrices in the attention pooling layer", and the thesis's code put every pooler tensor in the
  head's group.
* MTLoRA: TA-DoRA A at lr_backbone, B at 6x; block-L TS-LoRA likewise (A / B); the task pooling (probes and
  its TS-LoRA) and heads at lr_head.
Every group uses AdamW weight decay 0.01 (the thesis's default). "The thesis's code" is its published
training code, github.com/Antuke/PE_PEFT_FT (src/train.py: requires_grad and parameter groups).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain

import torch
from torch import nn

from .heads import make_heads
from .lora import BLOCK_TARGETS, adapter_parameters, inject_adapters
from .mtlora import MTLoRAEncoder

METHODS = ("lp", "ap", "ft4", "lora", "dora", "mtlora")
# The pooler's fused in_proj is a raw Parameter (not an nn.Linear), so the thesis's PEFT could not adapt it;
# its trainable counts (§3.6) hold only these three.
POOL_TARGETS = ("attn_pool.attn.out_proj", "attn_pool.mlp.c_fc", "attn_pool.mlp.c_proj")
FT_BLOCKS = 4  # §3.5: the last four transformer blocks


class TaskModel(nn.Module):
    """Encoder + one head per task; what the engine trains and evaluates.

    `encoder(images)` returns one embedding shared by all tasks (a tensor) or one per task (a dict, MTLoRA).
    `frozen_backbone` (LP) tells the engine that `embed` outputs may be computed once and cached
    (`--cache-embeddings`, a speed option without §3.1's augmentation).
    """

    def __init__(self, encoder: nn.Module, heads: nn.ModuleDict, tasks: Sequence[str], frozen_backbone: bool):
        super().__init__()
        self.encoder, self.heads = encoder, heads
        self.tasks = tuple(tasks)
        self.frozen_backbone = frozen_backbone

    def embed(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.encoder(images)
        return out if isinstance(out, dict) else {t: out for t in self.tasks}

    def classify(self, embeddings: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Heads only: {task: embedding} -> {task: logits (B, C)} (e.g. on cached LP embeddings)."""
        return {t: self.heads[t](embeddings[t]) for t in self.tasks}

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.classify(self.embed(images))

    def _trainable_keys(self) -> list[str]:
        # trainable parameters + the buffers of modules that own one (BatchNorm running statistics)
        params = {n for n, p in self.named_parameters() if p.requires_grad}
        owners = {n.rpartition(".")[0] for n in params}
        buffers = [n for n, _ in self.named_buffers() if n.rpartition(".")[0] in owners]
        return [k for k in self.state_dict() if k in params or k in buffers]

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """What the method trains (+ BN buffers): small enough to save every epoch."""
        state = self.state_dict()
        return {k: state[k] for k in self._trainable_keys()}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        expected = set(self._trainable_keys())
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        if missing or unexpected:
            raise KeyError(f"trainable state does not match this {type(self.encoder).__name__} model: "
                           f"missing {missing[:5]}, unexpected {unexpected[:5]}")
        self.load_state_dict(state, strict=False)


@dataclass
class Adapted:
    """A built method: the model, its AdamW parameter groups (each with a "name"), method and tasks."""

    model: TaskModel
    param_groups: list[dict]
    method: str
    tasks: tuple[str, ...]

    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)

    def total_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def _device(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


def _train(*modules) -> list[nn.Parameter]:
    params = [p for m in modules for p in m.parameters()]
    for p in params:
        p.requires_grad_(True)
    return params


def _group(name: str, params: list[nn.Parameter], lr: float, weight_decay: float) -> dict:
    return {"name": name, "params": params, "lr": lr, "weight_decay": weight_decay}


def build_method(method: str, tasks: Sequence[str], vision: nn.Module, *, rank: int = 64,
                 alpha: float | None = None, lora_dropout: float = 0.5, head_dropout: float = 0.5,
                 lr_head: float = 1e-4, lr_backbone: float = 1e-5, loraplus_ratio: float = 6.0,
                 weight_decay: float = 0.01, mtlora_train_magnitude: bool = False) -> Adapted:
    """Build `method` for `tasks` around `vision` (a VisionTransformer, edited in place and owned by the
    returned model). Works on any device, including "meta" (parameter counting without weights)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS} (zero-shot is zero_shot.py)")
    tasks = tuple(tasks)
    if not tasks:
        raise ValueError("at least one task is needed")
    vision.requires_grad_(False)
    width = vision.cfg.width
    head_dim = width if method == "mtlora" else vision.cfg.output_dim
    with torch.device(_device(vision)):
        heads = make_heads(tasks, head_dim, use_bn=method != "lp", dropout=head_dropout)
    groups = [_group("heads", list(heads.parameters()), lr_head, weight_decay)]

    if method == "mtlora":
        encoder = MTLoRAEncoder(vision, tasks, rank, alpha, lora_dropout, train_magnitude=mtlora_train_magnitude)
        groups += _mtlora_groups(encoder, lr_head, lr_backbone, loraplus_ratio, weight_decay)
    else:
        encoder = vision
        blocks = vision.transformer.resblocks
        if method in ("ap", "ft4"):
            groups.append(_group("attn_pool", _train(vision.attn_pool), lr_head, weight_decay))
        if method == "ft4":
            groups.append(_group(f"last{FT_BLOCKS}_blocks", _train(*blocks[-FT_BLOCKS:]), lr_backbone, weight_decay))
        if method in ("lora", "dora"):
            names = [f"transformer.resblocks.{i}.{n}" for i in range(len(blocks)) for n in BLOCK_TARGETS]
            inject_adapters(vision, names + list(POOL_TARGETS), method, rank=rank, alpha=alpha, dropout=lora_dropout)
            groups += _lora_groups(vision, lr_head, lr_backbone, loraplus_ratio, weight_decay)
    model = TaskModel(encoder, heads, tasks, frozen_backbone=method == "lp")
    _check_groups(model, groups)
    return Adapted(model, [g for g in groups if g["params"]], method, tasks)


def _loraplus_groups(named: list[tuple[str, nn.Parameter]], lr_backbone, ratio, wd) -> list[dict]:
    """LoRA+ (Hayou et al. 2024; §3.6: eta_B = ratio x eta_A, ratio 6) for the backbone's trainable adapter
    tensors, told apart by name: A (`lora_a`, and MTLoRA's zero-scaled `shared_a`) at lr_backbone, B (`lora_b`,
    `shared_b`) at ratio x lr_backbone, DoRA magnitudes at lr_backbone (with the A matrices, as the thesis's
    code grouped them). Anything else is left out, for _check_groups to report."""
    a, b, magnitude = [], [], []
    for name, p in named:
        if name.endswith(".magnitude"):
            magnitude.append(p)
        elif ".lora_b" in name or name.endswith("shared_b"):
            b.append(p)
        elif ".lora_a" in name or name.endswith("shared_a"):
            a.append(p)
    return [_group("backbone_lora_a", a, lr_backbone, wd),
            _group("backbone_lora_b", b, lr_backbone * ratio, wd),  # LoRA+
            _group("backbone_dora_magnitude", magnitude, lr_backbone, wd)]


def _lora_groups(vision, lr_head, lr_backbone, ratio, wd) -> list[dict]:
    for p in adapter_parameters(vision):  # A, B (and DoRA's m) of every adapter: what trains in the frozen tower
        p.requires_grad_(True)
    named = [(name, p) for name, p in vision.named_parameters() if p.requires_grad]
    backbone = [(name, p) for name, p in named if not name.startswith("attn_pool.")]
    # the pooler's adapters: lr_head, without the LoRA+ ratio (§3.6)
    pool = [p for name, p in named if name.startswith("attn_pool.")]
    return (_loraplus_groups(backbone, lr_backbone, ratio, wd)
            + [_group("attn_pool_adapters", pool, lr_head, wd)])


def _mtlora_groups(encoder: MTLoRAEncoder, lr_head, lr_backbone, ratio, wd) -> list[dict]:
    # TA-DoRA of blocks 1..L-1 and TS-LoRA of block L (+ its zero-scaled shared pair)
    backbone = [(name, p) for name, p in chain(encoder.vision.named_parameters(), encoder.block.named_parameters())
                if p.requires_grad]
    pool = [p for p in encoder.pool.parameters() if p.requires_grad]  # probes + TS-LoRA
    return _loraplus_groups(backbone, lr_backbone, ratio, wd) + [_group("task_pool", pool, lr_head, wd)]


def _check_groups(model: nn.Module, groups: list[dict]) -> None:
    """Every trainable parameter is in exactly one group and every grouped parameter is trainable."""
    grouped = [p for g in groups for p in g["params"]]
    ids = {id(p) for p in grouped}
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    if len(ids) != len(grouped) or ids != trainable:
        raise AssertionError("parameter groups do not cover exactly the trainable parameters")
