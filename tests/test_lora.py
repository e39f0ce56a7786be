"""LoRA / DoRA layers (replication/lora.py): no-op at init, float64 formula oracles, merge/unmerge,
the detached DoRA norm, adapter save/load, merged export, and peft's LoRA and DoRA as optional oracles."""
import io

import pytest
import torch
from torch import nn

from replication.config import get_config
from replication.lora import (DoRALinear, LoRALinear, adapter_modules, adapter_parameters, adapter_state_dict,
                              export_merged, inject_adapters, load_adapter_state_dict, merge_adapters,
                              unmerge_adapters)
from replication.pe import VisionTransformer

RANK, ALPHA = 4, 3.0  # alpha != rank so that a missing/duplicated scaling shows


def _layer(cls, dtype=torch.float32, seed=0, dropout=0.0):
    torch.manual_seed(seed)
    base = nn.Linear(16, 24).to(dtype)
    layer = cls(base, rank=RANK, alpha=ALPHA, dropout=dropout)
    return base, layer


def _randomize(layer, std=0.5):
    with torch.no_grad():
        layer.lora_b.normal_(0, std)
        layer.lora_a.normal_(0, std)
        if hasattr(layer, "magnitude"):
            layer.magnitude.mul_(torch.rand_like(layer.magnitude) + 0.5)


def _dora_oracle(w0, b, a, bm, m, x, scaling, detach_norm=True):
    """DoRA paper eq. (5) in float64: W' = m * (W0 + sBA) / ||W0 + sBA||_row; y = W' x + b."""
    v = w0 + scaling * bm @ a
    norm = v.norm(dim=1, keepdim=True)
    if detach_norm:
        norm = norm.detach()  # DoRA §4.3
    return x @ (m[:, None] * v / norm).T + b


@pytest.mark.parametrize("cls", [LoRALinear, DoRALinear])
def test_noop_at_init(cls):
    base, layer = _layer(cls)
    x = torch.randn(5, 7, 16)
    assert torch.equal(layer(x), base(x))
    assert torch.count_nonzero(layer.lora_b) == 0 and torch.count_nonzero(layer.lora_a) > 0
    assert layer.scaling == ALPHA / RANK
    assert not layer.weight.requires_grad and not layer.bias.requires_grad
    if cls is DoRALinear:  # one magnitude per output feature = row norms of W0
        assert layer.magnitude.shape == (24,)
        torch.testing.assert_close(layer.magnitude, base.weight.norm(dim=1))


def test_lora_matches_float64_formula():
    _, layer = _layer(LoRALinear, torch.float64)
    _randomize(layer)
    x = torch.randn(6, 16, dtype=torch.float64)
    expected = x @ (layer.weight + (ALPHA / RANK) * layer.lora_b @ layer.lora_a).T + layer.bias
    torch.testing.assert_close(layer(x), expected, rtol=1e-12, atol=1e-12)


def test_dora_matches_float64_formula_and_its_gradients():
    _, layer = _layer(DoRALinear, torch.float64)
    _randomize(layer)
    x = torch.randn(6, 16, dtype=torch.float64)
    y = layer(x)
    a, bm, m = (t.detach().clone().requires_grad_(True) for t in (layer.lora_a, layer.lora_b, layer.magnitude))
    y_ref = _dora_oracle(layer.weight, layer.bias, a, bm, m, x, ALPHA / RANK)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    # gradients: equal to the oracle with the norm detached, different from the one without (so the
    # detaching is what we implement, not a no-op)
    g = torch.randn_like(y)
    (y * g).sum().backward()
    (y_ref * g).sum().backward()
    for mine, ref in ((layer.lora_a, a), (layer.lora_b, bm), (layer.magnitude, m)):
        torch.testing.assert_close(mine.grad, ref.grad, rtol=1e-10, atol=1e-12)
    a2, b2 = (t.detach().clone().requires_grad_(True) for t in (layer.lora_a, layer.lora_b))
    (_dora_oracle(layer.weight, layer.bias, a2, b2, m.detach(), x, ALPHA / RANK, detach_norm=False) * g).sum().backward()
    assert not torch.allclose(b2.grad, bm.grad, rtol=1e-6)
    # the norm itself is a constant: no graph behind it, and W0 gets no gradient
    assert not layer.weight_norm().requires_grad
    assert layer.weight.grad is None and layer.bias.grad is None


@pytest.mark.parametrize("cls", [LoRALinear, DoRALinear])
def test_dropout_acts_on_the_low_rank_branch_only(cls):
    """LoRA: y = W0 x + b + s B A dropout(x); DoRA: y = (m/||V||) (W0 x + s B A dropout(x)) + b, one W0 product
    per step, as LoRA. No dropout in eval mode."""
    _, layer = _layer(cls, torch.float64, dropout=0.5)
    _randomize(layer)
    layer.train()
    x = torch.randn(6, 16, dtype=torch.float64)
    torch.manual_seed(3)
    y = layer(x)
    torch.manual_seed(3)
    z = layer.dropout(x)
    assert not torch.equal(z, x)
    delta = (ALPHA / RANK) * layer.lora_b @ layer.lora_a
    scale = layer.magnitude / (layer.weight + delta).norm(dim=1) if cls is DoRALinear else 1.0

    def expected(low_rank_input):
        return scale * (x @ layer.weight.T + low_rank_input @ delta.T) + layer.bias

    torch.testing.assert_close(y, expected(z), rtol=1e-12, atol=1e-12)
    layer.eval()
    torch.testing.assert_close(layer(x), expected(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_dora_small_magnitude_moves_reach_the_half_precision_forward(dtype):
    """Under autocast, m/||V|| = 1.003 rounded to bf16 is 1 (its grid near 1 is 2^-7): a 0.3 % move of every
    magnitude away from its start would not reach the forward pass. The layer must show it as the float64
    oracle does."""
    _, layer = _layer(DoRALinear, seed=1)  # at init: m = ||W0||, so m/||V|| = 1
    x = torch.randn(4096, 16)

    def pair():
        args = [t.detach().double() for t in (layer.weight, layer.bias, layer.lora_a, layer.lora_b, layer.magnitude)]
        with torch.autocast("cpu", dtype=dtype):
            y = layer(x)
        return y, _dora_oracle(*args, x.double(), ALPHA / RANK)

    y0, ref0 = pair()
    with torch.no_grad():
        layer.magnitude.mul_(1.003)
    y1, ref1 = pair()
    assert y1.dtype == dtype
    expected, measured = ref1 - ref0, y1.double() - y0.double()
    # each output carries its own rounding (~2^-9 relative in bf16), as large as the change itself: compare
    # the change as a whole, the slope of the measured change on the exact one (1: shown, 0: hidden)
    slope = (measured * expected).sum() / (expected * expected).sum()
    assert abs(slope.item() - 1) < 0.1


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_dora_weight_norm_is_float32_under_autocast(dtype):
    """||W0 + s B A|| as merged_weight computes it, not from a half-precision B A (a float64 oracle)."""
    _, layer = _layer(DoRALinear)
    _randomize(layer)
    exact = (layer.weight.double() + ALPHA / RANK * layer.lora_b.double() @ layer.lora_a.double()).norm(dim=1)
    with torch.autocast("cpu", dtype=dtype):
        norm = layer.weight_norm()
    assert norm.dtype == torch.float32
    torch.testing.assert_close(norm.double(), exact, rtol=1e-6, atol=0)


@pytest.mark.parametrize("cls", [LoRALinear, DoRALinear])
def test_merge_equals_unmerged_and_unmerge_restores_w0(cls):
    _, layer = _layer(cls)
    _randomize(layer)
    layer.eval()
    w0 = layer.weight.detach().clone()
    x = torch.randn(4, 9, 16)
    y = layer(x)
    layer.merge()
    layer.merge()  # idempotent
    assert layer.merged
    assert not torch.allclose(layer.weight, w0)
    torch.testing.assert_close(layer(x), y, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x @ layer.weight.T + layer.bias, y, rtol=1e-5, atol=1e-5)  # a plain linear now
    layer.unmerge()
    layer.unmerge()
    assert not layer.merged
    torch.testing.assert_close(layer.weight.detach(), w0, rtol=0, atol=1e-6)
    torch.testing.assert_close(layer(x), y, rtol=1e-6, atol=1e-6)


def _tiny_vision(seed=0):
    torch.manual_seed(seed)
    return VisionTransformer(get_config("demo-tiny").vision).eval()


TARGETS = [f"transformer.resblocks.{i}.{n}" for i in range(6)
           for n in ("attn.in_proj", "attn.out_proj", "mlp.c_fc", "mlp.c_proj")] + \
          ["attn_pool.attn.out_proj", "attn_pool.mlp.c_fc", "attn_pool.mlp.c_proj"]


def test_inject_keeps_backbone_keys_and_checks_names():
    vision = _tiny_vision()
    before = set(vision.state_dict())
    inject_adapters(vision, TARGETS, "dora", rank=RANK, alpha=ALPHA)
    after = set(vision.state_dict())
    assert before <= after  # backbone keys unchanged: a backbone checkpoint still loads
    assert {k.rsplit(".", 1)[1] for k in after - before} == {"lora_a", "lora_b", "magnitude"}
    assert len(list(adapter_modules(vision))) == len(TARGETS)
    assert len(adapter_parameters(vision, "b")) == len(TARGETS)
    with pytest.raises(KeyError, match="no submodule"):
        inject_adapters(vision, ["transformer.resblocks.9.attn.in_proj"], "lora")
    with pytest.raises(ValueError, match="already"):
        inject_adapters(vision, TARGETS[:1], "lora")
    with pytest.raises(TypeError, match="expected nn.Linear"):
        inject_adapters(vision, ["ln_post"], "lora")
    with pytest.raises(ValueError, match="kind"):
        inject_adapters(_tiny_vision(), TARGETS[:1], "ia3")


@pytest.mark.parametrize("kind", ["lora", "dora"])
def test_adapters_save_load_and_merged_export(kind):
    vision = _tiny_vision()
    plain_keys = set(vision.state_dict())
    inject_adapters(vision, TARGETS, kind, rank=RANK, alpha=ALPHA)
    for _, m in adapter_modules(vision):
        _randomize(m, std=0.05)
    x = torch.randn(2, 3, 64, 64)
    y = vision(x)

    state = adapter_state_dict(vision)
    n_adapter = sum(t.numel() for t in state.values())
    n_backbone = sum(v.numel() for k, v in vision.state_dict().items() if k not in state)
    assert n_adapter < n_backbone / 2
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)

    other = _tiny_vision()  # same backbone weights (same seed), fresh adapters
    inject_adapters(other, TARGETS, kind, rank=RANK, alpha=ALPHA)
    assert not torch.allclose(other(x), y)
    load_adapter_state_dict(other, torch.load(buffer))
    torch.testing.assert_close(other(x), y)
    with pytest.raises(KeyError, match="missing"):
        load_adapter_state_dict(other, {k: v for k, v in state.items() if "resblocks.0." not in k})

    plain = export_merged(vision)
    assert not list(adapter_modules(plain)) and list(adapter_modules(vision))  # original untouched
    assert set(plain.state_dict()) == plain_keys
    fresh = VisionTransformer(get_config("demo-tiny").vision).eval()
    fresh.load_state_dict(plain.state_dict())  # strict: a plain PE vision tower
    torch.testing.assert_close(fresh(x), y, rtol=1e-5, atol=1e-5)

    merge_adapters(vision)
    torch.testing.assert_close(vision(x), y, rtol=1e-5, atol=1e-5)
    with pytest.raises(RuntimeError, match="unmerge"):
        load_adapter_state_dict(vision, state)
    unmerge_adapters(vision)
    torch.testing.assert_close(vision(x), y, rtol=1e-5, atol=1e-5)


def _peft_twin(peft, cls, dropout):
    """Our LoRALinear or DoRALinear and peft's LoRA or DoRA around copies of one nn.Linear(16, 24), with equal
    random adapters; returns (ours, peft's model, peft's layer, peft's magnitude or None)."""
    dora = cls is DoRALinear
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 24))
    ours = cls(nn.Linear(16, 24), rank=RANK, alpha=ALPHA, dropout=dropout)
    with torch.no_grad():
        ours.weight.copy_(model[0].weight)
        ours.bias.copy_(model[0].bias)
        if dora:
            ours.magnitude.copy_(ours.weight.norm(dim=1))
    ref = peft.get_peft_model(model, peft.LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=["0"],
                                                     use_dora=dora, lora_dropout=dropout))
    layer = ref.base_model.model[0]
    mag = layer.lora_magnitude_vector["default"] if dora else None
    mag = mag.weight if hasattr(mag, "weight") else mag
    with torch.no_grad():
        _randomize(ours)
        layer.lora_A["default"].weight.copy_(ours.lora_a)
        layer.lora_B["default"].weight.copy_(ours.lora_b)
        if dora:
            mag.copy_(ours.magnitude)
    return ours, ref, layer, mag


@pytest.mark.parametrize("cls", [LoRALinear, DoRALinear])
def test_lora_and_dora_match_peft(cls):
    """peft (test-only dependency) as an independent implementation of LoRA and DoRA: outputs, the gradients of
    A, B (and DoRA's magnitude), and the merged weight that inference runs (peft's merge_and_unload)."""
    peft = pytest.importorskip("peft")
    ours, ref, layer, mag = _peft_twin(peft, cls, dropout=0.0)
    x = torch.randn(5, 16)
    y_ours, y_ref = ours(x), ref(x)
    assert (y_ours - x @ ours.weight.T - ours.bias).abs().max() > 0.1  # the adapter moves the output
    torch.testing.assert_close(y_ours, y_ref, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(y_ours)
    (y_ours * g).sum().backward()
    (y_ref * g).sum().backward()
    torch.testing.assert_close(ours.lora_b.grad, layer.lora_B["default"].weight.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ours.lora_a.grad, layer.lora_A["default"].weight.grad, rtol=1e-4, atol=1e-5)
    if mag is not None:
        torch.testing.assert_close(ours.magnitude.grad, mag.grad, rtol=1e-4, atol=1e-5)
    merged = ref.merge_and_unload()[0]
    torch.testing.assert_close(ours.to_linear().weight, merged.weight, rtol=1e-5, atol=1e-6)


def test_dora_with_dropout_differs_from_peft_by_the_stated_term():
    """Training with dropout: ours - peft = (m/||V|| - 1) W0 (x - dropout(x)) (DoRALinear's docstring);
    in eval mode the two agree."""
    peft = pytest.importorskip("peft")
    ours, ref, _, _ = _peft_twin(peft, DoRALinear, dropout=0.5)
    ours.train(), ref.train()
    x = torch.randn(5, 16)
    torch.manual_seed(7)
    y_ours = ours(x)
    torch.manual_seed(7)
    y_ref = ref(x)
    torch.manual_seed(7)
    z = ours.dropout(x)  # the same mask both layers drew
    with torch.no_grad():
        scale = ours.magnitude / ours.weight_norm()
        gap = (scale - 1) * ((x - z) @ ours.weight.T)
    assert gap.abs().max() > 1e-2  # the term is not trivially zero here
    torch.testing.assert_close(y_ours - y_ref, gap, rtol=1e-4, atol=1e-5)
    ours.eval(), ref.eval()
    torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-5)


def test_l14_adapter_state_is_a_small_fraction_of_the_backbone():
    """Rank-64 DoRA on PE-Core-L14-336 (meta device): ~26M adapter values (~105 MB fp32) vs the 317M tower."""
    with torch.device("meta"):
        vision = VisionTransformer(get_config("PE-Core-L14-336").vision)
    backbone = sum(p.numel() for p in vision.parameters())
    inject_adapters(vision, [t.replace("resblocks.0.", f"resblocks.{i}.") for i in range(24) for t in TARGETS[:4]]
                    + TARGETS[-3:], "dora", rank=64)
    adapter = sum(t.numel() for t in adapter_state_dict(vision).values())
    assert adapter == 24 * (64 * (1024 + 3072 + 2048 + 2 * 5120) + 9216) + 64 * (2048 + 2 * 5120) + 6144
    assert adapter * 4 < 200e6 and adapter < backbone / 10


def test_default_alpha_is_no_scaling():
    """§3.6 "We do not use a scaling factor": alpha defaults to the rank, so y = W0 x + b + B A x."""
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(16, 24).double(), rank=RANK)
    _randomize(layer)
    x = torch.randn(6, 16, dtype=torch.float64)
    expected = x @ (layer.weight + layer.lora_b @ layer.lora_a).T + layer.bias
    torch.testing.assert_close(layer(x), expected, rtol=1e-12, atol=1e-12)


def test_lora_a_is_initialised_like_nn_linear():
    """A gets nn.Linear's (and PEFT's) kaiming-uniform(a=sqrt(5)) init, U(-1/sqrt(in), 1/sqrt(in)): the same
    draws as an nn.Linear(in, rank) made from the same random state."""
    base = nn.Linear(16, 24)
    torch.manual_seed(11)
    layer = LoRALinear(base, rank=RANK)
    torch.manual_seed(11)
    reference = nn.Linear(16, RANK, bias=False).weight
    assert torch.equal(layer.lora_a, reference)
    assert layer.lora_a.abs().max() <= 16 ** -0.5


def test_adapter_parameters_select_by_kind():
    vision = _tiny_vision()
    inject_adapters(vision, TARGETS[:2], "dora", rank=RANK)
    layers = [m for _, m in adapter_modules(vision)]
    for which, attr in (("a", "lora_a"), ("b", "lora_b"), ("magnitude", "magnitude")):
        got = adapter_parameters(vision, which)
        assert len(got) == 2 and all(p is getattr(m, attr) for p, m in zip(got, layers))
    assert len(adapter_parameters(vision)) == 6
