"""LoRA and DoRA adapters for nn.Linear layers, written by hand (thesis §3.6).

LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models"):
    y = W0 x + b + (alpha / r) * B A dropout(x),   A: (r, in), B: (out, r), B = 0 at init.
DoRA (Liu et al. 2024, "DoRA: Weight-Decomposed Low-Rank Adaptation"):
    W' = m * (W0 + s BA) / ||W0 + s BA||_row,   m: one magnitude per *output* feature,
    initialised to the row norms of W0, so W' = W0 at init. §4.3 of the paper treats the norm as a
    constant in the backward pass (detached), which saves memory and changes little.

The thesis (§3.6) adapts every linear layer of the 24 blocks (the fused q|k|v `in_proj`, `out_proj`,
`c_fc`, `c_proj`) and of the attention pooling (`out_proj`, `c_fc`, `c_proj`; its fused in_proj is a raw
Parameter and was not adapted), rank 64, "no scaling factor" (alpha = r, scale 1). LoRA dropout 0.5 is
not in the thesis's text; it comes from its published code (methods.py).

Style follows torchtune's `modules/peft`: the adapter module *is* the linear layer (it owns `weight`
and `bias`, the very Parameters of the wrapped nn.Linear), so the backbone's state_dict keys do not
change (`attn.in_proj.weight` stays `attn.in_proj.weight`) and only `lora_a`, `lora_b` (and DoRA's
`magnitude`) are new. Merging folds the update into `weight` exactly, so a merged model costs nothing
extra at inference (§3.6: "DoRA does not introduce any additional inference overhead").
"""
from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

ADAPTER_KINDS = ("lora", "dora")
# §3.6: "every linear layer" of a transformer block, by its name in pe.ResidualAttentionBlock. The same four
# carry MTLoRA's task-agnostic adapters (§3.6.1: "the same configuration described previously").
BLOCK_TARGETS = ("attn.in_proj", "attn.out_proj", "mlp.c_fc", "mlp.c_proj")


def adopt_frozen_base(adapter: nn.Module, base: nn.Linear) -> None:
    """Give `adapter` the base layer's own frozen Parameters (not copies), so the backbone's state_dict
    keys and loaded weights stay exactly as they are after an adapter wraps the layer."""
    adapter.in_features, adapter.out_features = base.in_features, base.out_features
    adapter.weight = base.weight
    adapter.register_parameter("bias", base.bias)
    adapter.weight.requires_grad_(False)
    if adapter.bias is not None:
        adapter.bias.requires_grad_(False)


def lora_pair(layer: nn.Module, rank: int) -> tuple[nn.Parameter, nn.Parameter]:
    """A new LoRA pair (A, B) for `layer` (an nn.Linear or an adapter that adopted one), on its weight's
    device and dtype: A (rank, in_features) initialised like nn.Linear's weight (kaiming-uniform,
    a=sqrt(5)), as PEFT (the thesis's code) does, not as §2.6's illustrative Listing 2.3 (normal, std
    1/rank); B (out_features, rank) zeros, so B A = 0 and the adapted layer is the base layer at
    initialisation. Only A draws random numbers: pairs made one after the other draw in that order.

    Used by LoRALinear/DoRALinear and by MTLoRA's task-specific layers (mtlora.TaskLoRALinear).
    """
    factory = {"device": layer.weight.device, "dtype": layer.weight.dtype}
    a = nn.Parameter(torch.empty(rank, layer.in_features, **factory))
    nn.init.kaiming_uniform_(a, a=math.sqrt(5))
    return a, nn.Parameter(torch.zeros(layer.out_features, rank, **factory))


def lora_scaling(rank: int, alpha: float | None) -> float:
    """alpha / rank, alpha defaulting to the rank: the thesis's "no scaling factor" (§3.6)."""
    return float(rank if alpha is None else alpha) / rank


def lora_dropout(p: float) -> nn.Module:
    """The dropout on an adapter's input (the low-rank branch only); an identity when p is 0."""
    return nn.Dropout(p) if p > 0 else nn.Identity()


def add_low_rank(out: torch.Tensor, z: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
                 scaling: float) -> torch.Tensor:
    """out + scaling * (z A^T) B^T for out (..., d_out), z (..., d_in), A (r, d_in), B (d_out, r).

    Two thin matmuls instead of forming BA (r << d_in, d_out), and the addition done by the second GEMM
    (torch.addmm reads `out` as its C matrix, scaling as its alpha): the adapter costs no separate pass over
    the (tokens, d_out) activations, which at batch 128 x 577 tokens would be a memory-bound pass per layer.
    """
    h = F.linear(z, a)
    y = torch.addmm(out.reshape(-1, out.shape[-1]), h.reshape(-1, h.shape[-1]), b.t(), alpha=scaling)
    return y.view(out.shape)


class LoRALinear(nn.Module):
    """A frozen nn.Linear plus a trainable low-rank update (Hu et al. 2021, §4.1).

    A is initialised like nn.Linear's weight, B is zeros (`lora_pair`), so the layer is exactly the base
    layer at initialisation. Dropout acts on the adapter's input only.
    """

    def __init__(self, base: nn.Linear, rank: int = 64, alpha: float | None = None, dropout: float = 0.0):
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"LoRA wraps an nn.Linear, got {type(base).__name__}")
        if rank <= 0:
            raise ValueError(f"rank must be positive, got {rank}")
        adopt_frozen_base(self, base)
        self.rank = rank
        self.alpha = float(rank if alpha is None else alpha)
        self.scaling = lora_scaling(rank, alpha)
        self.lora_a, self.lora_b = lora_pair(self, rank)
        self.dropout = lora_dropout(dropout)
        self.merged = False

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, "
                f"alpha={self.alpha:g}, merged={self.merged}")

    def delta_weight(self) -> torch.Tensor:
        """The dense update s * B A, shape (out, in)."""
        return self.scaling * (self.lora_b @ self.lora_a)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight, self.bias)
        if self.merged:
            return out
        return add_low_rank(out, self.dropout(x), self.lora_a, self.lora_b, self.scaling)

    @torch.no_grad()
    def merged_weight(self) -> torch.Tensor:
        """The adapted weight W' as a new tensor (W0 + s BA for LoRA), without changing the layer."""
        if self.merged:
            return self.weight.detach().clone()
        return self.weight + self.delta_weight().to(self.weight.dtype)

    @torch.no_grad()
    def merge(self) -> None:
        """W <- W' (idempotent): the layer becomes a plain linear layer with the update folded in."""
        if not self.merged:
            self.weight.copy_(self.merged_weight())
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """W <- W - s BA: restores W0 up to floating-point rounding (idempotent)."""
        if self.merged:
            self.weight -= self.delta_weight().to(self.weight.dtype)
            self.merged = False

    def to_linear(self) -> nn.Linear:
        """A plain nn.Linear with the merged weight (the adapter folded in), sharing no storage."""
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                           device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            linear.weight.copy_(self.merged_weight())
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return linear


class DoRALinear(LoRALinear):
    """DoRA (Liu et al. 2024): W' = m * V / ||V||_row with V = W0 + s BA; the bias is not rescaled.

    The magnitude m has one entry per output feature (as in the paper's code and PEFT), so
    `m.numel() == out_features`. The row norm ||V|| is computed once per forward call from the weights
    (not from the activations) and detached (paper §4.3). LoRA dropout acts on the low-rank branch's input,
    as in LoRA, and the magnitude rescales the whole directional output:
        y = (m/||V||) * (W0 x + s B A dropout(x)) + b
    so a training step runs W0 once per layer, like LoRA: DoRA trains at LoRA's speed. In eval mode, or
    without dropout, this is exactly y = W' x + b, which is what PEFT computes (checked in the tests). In
    training with dropout PEFT instead runs W0 a second time on the dropped-out input,
    y_peft = W0 x + b + (m/||V|| - 1) W0 dropout(x) + (m/||V||) s B A dropout(x); the two differ by
    (m/||V|| - 1) W0 (x - dropout(x)), whose factor starts at 0 (m is initialised to ||W0||).
    """

    def __init__(self, base: nn.Linear, rank: int = 64, alpha: float | None = None, dropout: float = 0.0):
        super().__init__(base, rank, alpha, dropout)
        self.magnitude = nn.Parameter(self.weight.detach().norm(dim=1))
        # Row norm used at merge time, kept so that unmerge can invert the merge.
        self.register_buffer("_merged_norm", None, persistent=False)

    def weight_norm(self) -> torch.Tensor:
        """||W0 + s BA|| per output row, detached (DoRA §4.3). In float32 under autocast too, as merged_weight
        computes it: a half-precision B A would make the trained forward drift from the merged export, and the
        product costs about 2·r·out·in FLOPs per layer and step, a negligible part of it."""
        with torch.no_grad(), torch.autocast(self.weight.device.type, enabled=False):
            return (self.weight + self.delta_weight().to(self.weight.dtype)).norm(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return F.linear(x, self.weight, self.bias)
        # y = m/||V|| (W0 x + s B A dropout(x)) + b with one W0 product. The rescale is written as
        # D + D (ratio - 1) with D = V x + b / ratio: the bias rides in the W0 GEMM, so the whole rescale is one
        # fused pass, and ratio - 1, small, keeps its precision in half precision where ratio itself would
        # round to a 2^-7 grid near 1 that hides the magnitudes' small moves from the forward pass.
        # It assumes m stays far from 0 (it starts at W0's row norms and trains at 1e-5), where b / ratio
        # would blow up; and m's gradient then comes from two sums that cancel as far as the bias outweighs
        # W x (relative error measured at bias std 8.6x that of W0 x: 4e-2 in bf16, 4e-3 in fp16).
        ratio = self.magnitude / self.weight_norm()  # fp32; the gradient reaches m only
        bias = None if self.bias is None else self.bias / ratio
        directional = add_low_rank(F.linear(x, self.weight, bias), self.dropout(x), self.lora_a, self.lora_b,
                                   self.scaling)
        return torch.addcmul(directional, directional, (ratio - 1).to(directional.dtype))

    @torch.no_grad()
    def merged_weight(self) -> torch.Tensor:
        """W' = m * V / ||V||_row with V = W0 + s BA, as a new tensor."""
        if self.merged:
            return self.weight.detach().clone()
        v = self.weight + self.delta_weight().to(self.weight.dtype)
        return v * (self.magnitude / v.norm(dim=1)).unsqueeze(1).to(v.dtype)

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged:
            norm = self.weight_norm()
            self.weight.copy_(self.merged_weight())
            self._merged_norm = norm
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            v = self.weight * (self._merged_norm / self.magnitude).unsqueeze(1).to(self.weight.dtype)
            self.weight.copy_(v - self.delta_weight().to(v.dtype))
            self._merged_norm = None
            self.merged = False


_ADAPTER_CLASSES = {"lora": LoRALinear, "dora": DoRALinear}


def _parent(root: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent_name, _, child = name.rpartition(".")
    return (root.get_submodule(parent_name) if parent_name else root), child


def inject_adapters(module: nn.Module, names: Iterable[str], kind: str = "lora", *, rank: int = 64,
                    alpha: float | None = None, dropout: float = 0.0) -> list[str]:
    """Replace each nn.Linear `module.<name>` by a LoRALinear/DoRALinear around it, in place.

    `names` are dotted paths relative to `module` (e.g. "transformer.resblocks.0.attn.in_proj").
    Returns the names adapted. A clear error names any path that is missing or not an nn.Linear.
    """
    if kind not in _ADAPTER_CLASSES:
        raise ValueError(f"adapter kind must be one of {ADAPTER_KINDS}, got {kind!r}")
    names = list(names)
    for name in names:
        try:
            target = module.get_submodule(name)
        except AttributeError as err:
            raise KeyError(f"inject_adapters: no submodule {name!r} in {type(module).__name__}") from err
        if isinstance(target, LoRALinear):
            raise ValueError(f"inject_adapters: {name!r} already carries an adapter")
        if not isinstance(target, nn.Linear):
            raise TypeError(f"inject_adapters: {name!r} is a {type(target).__name__}, expected nn.Linear")
        parent, child = _parent(module, name)
        setattr(parent, child, _ADAPTER_CLASSES[kind](target, rank=rank, alpha=alpha, dropout=dropout))
    return names


def adapter_modules(model: nn.Module) -> Iterator[tuple[str, LoRALinear]]:
    """(name, module) of every LoRA/DoRA layer in `model`."""
    for name, m in model.named_modules():
        if isinstance(m, LoRALinear):
            yield name, m


def adapter_parameters(model: nn.Module, which: str = "all") -> list[nn.Parameter]:
    """Adapter Parameters: which = "a" (LoRA A), "b" (LoRA B), "magnitude" (DoRA m) or "all".

    Only LoRALinear/DoRALinear layers: MTLoRA's task-specific pairs (mtlora.TaskLoRALinear) are not among
    them. methods.py marks these trainable and accounting.py counts what merging folds away; the LoRA+
    parameter groups (methods.py) split the trainable tensors by name, which covers MTLoRA's pairs too.
    """
    attrs = {"a": ("lora_a",), "b": ("lora_b",), "magnitude": ("magnitude",),
             "all": ("lora_a", "lora_b", "magnitude")}[which]
    return [getattr(m, a) for _, m in adapter_modules(model) for a in attrs if hasattr(m, a)]


def merge_adapters(model: nn.Module) -> nn.Module:
    """Fold every adapter into its weight (W <- W'), in place; returns `model`."""
    for _, m in adapter_modules(model):
        m.merge()
    return model


def unmerge_adapters(model: nn.Module) -> nn.Module:
    """Undo merge_adapters (W0 restored up to rounding), in place; returns `model`."""
    for _, m in adapter_modules(model):
        m.unmerge()
    return model


_ADAPTER_KEYS = ("lora_a", "lora_b", "magnitude")


def _adapter_tensors(model: nn.Module) -> dict[str, nn.Parameter]:
    """Every adapter Parameter (A, B, DoRA magnitude), keyed as in model.state_dict()."""
    return {f"{name}.{key}": getattr(m, key)
            for name, m in adapter_modules(model) for key in _ADAPTER_KEYS if hasattr(m, key)}


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the adapter tensors (A, B, DoRA magnitudes), keyed as in model.state_dict().

    For L14 with rank 64 this is ~26M values (~100 MB fp32) instead of the 1.2 GB backbone.
    """
    return {key: param.detach().clone() for key, param in _adapter_tensors(model).items()}


@torch.no_grad()
def load_adapter_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load tensors saved by adapter_state_dict into a model with the same adapters (unmerged)."""
    expected = _adapter_tensors(model)
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise KeyError(f"adapter state does not match the model: missing {missing[:5]}"
                       f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
                       f"{'...' if len(unexpected) > 5 else ''}")
    if any(m.merged for _, m in adapter_modules(model)):
        raise RuntimeError("unmerge_adapters(model) before loading adapter weights")
    for key, param in expected.items():
        if state[key].shape != param.shape:
            raise ValueError(f"adapter tensor {key}: expected shape {tuple(param.shape)}, got {tuple(state[key].shape)}")
        param.copy_(state[key])


def export_merged(model: nn.Module) -> nn.Module:
    """A deep copy of `model` for inference with every adapter merged and replaced by a plain nn.Linear.

    The copy has exactly the original (un-adapted) module structure and state_dict keys, so e.g. a
    merged VisionTransformer loads into a fresh VisionTransformer. `model` itself is left unchanged.
    """
    plain = copy.deepcopy(model)
    for name, m in list(adapter_modules(plain)):
        parent, child = _parent(plain, name)
        setattr(parent, child, m.to_linear())
    return plain
