"""PE-Core architecture tests: RoPE by hand, a float64 re-computation of the full forward, parameter counts.

The references here are written independently of replication.pe / replication.rope (explicit loops,
math.cos/sin, plain tensor ops in float64), following Meta's core/vision_encoder/pe.py.
"""
import math
import re
from dataclasses import replace

import pytest
import torch

from replication.checkpoint import to_meta_layout
from replication.config import CONFIGS, CLIPConfig, TextConfig, VisionConfig, get_config
from replication.pe import CLIP, VisionTransformer, image_transform
from replication.rope import Rope2D, rope_angles

# ---------------------------------------------------------------------------------------------------------
# 2D RoPE by hand


def hand_angles(grid_h, grid_w, head_dim, cls_token):
    """Angle table by explicit loops: x half then y half, interleaved pairs, positions from 1 with CLS."""
    quarter = head_dim // 4  # frequencies per axis
    rows = [[0.0] * head_dim] if cls_token else []
    for y in range(grid_h):
        for x in range(grid_w):
            row = []
            for axis_pos in (x, y):  # first half rotates with x, second half with y
                pos = axis_pos + (1 if cls_token else 0)
                for i in range(quarter):
                    f = 10000.0 ** (-i / quarter)
                    row += [pos * f, pos * f]  # the same angle for channels 2i and 2i+1
            rows.append(row)
    return rows


def test_rope_angles_by_hand():
    # 2x3 grid, head_dim 8: 2 frequencies per axis, 1 and 10000**-0.5 = 0.01
    expected = hand_angles(2, 3, 8, cls_token=True)
    assert expected[0] == [0.0] * 8
    # token (y=1, x=2) is row 1 + 1*3 + 2 = 6: x-position 3, y-position 2
    assert expected[6] == pytest.approx([3, 3, 0.03, 0.03, 2, 2, 0.02, 0.02])
    got = rope_angles(2, 3, 8, cls_token=True)
    assert got.shape == (7, 8)
    torch.testing.assert_close(got.double(), torch.tensor(expected, dtype=torch.float64), rtol=1e-6, atol=1e-7)
    # without a CLS token positions start at 0 and there is no zero row
    got = rope_angles(3, 2, 12, cls_token=False)
    torch.testing.assert_close(got.double(), torch.tensor(hand_angles(3, 2, 12, False), dtype=torch.float64),
                               rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rope_rotation_by_hand(dtype):
    grid_h, grid_w, head_dim = 2, 3, 8
    torch.manual_seed(0)
    t = torch.randn(1, 2, 1 + grid_h * grid_w, head_dim).to(dtype)
    rope = Rope2D(head_dim, cls_token=True)
    rope.update_grid(grid_h, grid_w)
    out = rope(t)
    assert out.dtype == dtype
    angles = hand_angles(grid_h, grid_w, head_dim, True)
    tv = t.double()
    expected = torch.zeros_like(tv)
    for h in range(2):
        for n in range(t.shape[2]):
            for i in range(head_dim // 2):  # pair (2i, 2i+1) rotates by angle[2i]
                a, b, ang = tv[0, h, n, 2 * i].item(), tv[0, h, n, 2 * i + 1].item(), angles[n][2 * i]
                expected[0, h, n, 2 * i] = a * math.cos(ang) - b * math.sin(ang)
                expected[0, h, n, 2 * i + 1] = b * math.cos(ang) + a * math.sin(ang)
    # the CLS token (row 0) is not rotated
    torch.testing.assert_close(out[0, :, 0], t[0, :, 0])
    # rotation done in fp32 then rounded once to the input dtype
    torch.testing.assert_close(out, expected.to(dtype), rtol=1e-5, atol=1e-6)


def test_rope_table_follows_a_new_grid():
    """One Rope2D (shared by every block) used at two resolutions: after update_grid(3, 2) it rotates with the
    3x2 table, not the cached 2x3 one (both have 7 rows, so only the values can tell)."""
    rope = Rope2D(8, cls_token=True)
    rope.update_grid(2, 3)
    t = torch.randn(1, 1, 7, 8)
    rope(t)
    rope.update_grid(3, 2)
    angles = torch.tensor(hand_angles(3, 2, 8, True), dtype=torch.float64)[:, ::2]  # pair (2i, 2i+1): angle 2i
    a, b, cos, sin = t.double()[..., 0::2], t.double()[..., 1::2], torch.cos(angles), torch.sin(angles)
    expected = torch.stack([a * cos - b * sin, b * cos + a * sin], dim=-1).flatten(-2)
    torch.testing.assert_close(rope(t).double(), expected, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------
# float64 re-computation of the whole model

TINY = CLIPConfig(
    "test-tiny",
    VisionConfig(image_size=24, patch_size=8, width=32, layers=2, heads=2, mlp_dim=48, output_dim=16, pool_heads=4),
    TextConfig(width=24, layers=2, heads=3, mlp_dim=40, output_dim=16, context_length=8, vocab_size=50),
)


def ln(x, w, b, eps=1e-5):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * w + b


def gelu(x):
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def softmax(s):
    e = torch.exp(s - s.max(-1, keepdim=True).values)
    return e / e.sum(-1, keepdim=True)


def mha(q_in, kv_in, w, b, w_out, b_out, heads, angles=None, causal=False):
    """Multi-head attention from the fused weight (q|k|v rows), optional RoPE angles and causal mask."""
    B, Nq, C = q_in.shape
    N, d = kv_in.shape[1], C // heads
    q = q_in @ w[:C].T + b[:C]
    k = kv_in @ w[C:2 * C].T + b[C:2 * C]
    v = kv_in @ w[2 * C:].T + b[2 * C:]
    split = lambda t: t.reshape(B, t.shape[1], heads, d).permute(0, 2, 1, 3)
    q, k, v = split(q), split(k), split(v)
    if angles is not None:
        cos, sin = torch.cos(angles), torch.sin(angles)

        def rot(t):
            r = torch.empty_like(t)
            r[..., 0::2], r[..., 1::2] = -t[..., 1::2], t[..., 0::2]
            return t * cos + r * sin

        q, k = rot(q), rot(k)
    s = q @ k.transpose(-1, -2) / math.sqrt(d)
    if causal:
        s = s + torch.triu(torch.full((Nq, N), float("-inf"), dtype=s.dtype), 1)
    o = (softmax(s) @ v).permute(0, 2, 1, 3).reshape(B, Nq, C)
    return o @ w_out.T + b_out


def bilinear(grid, out_h, out_w):
    """align_corners=False bilinear resize of a (h, w, C) grid, by the textbook formula."""
    h, w, _ = grid.shape

    def taps(out, size):
        res = []
        for i in range(out):
            src = max((i + 0.5) * size / out - 0.5, 0.0)
            i0 = int(math.floor(src))
            i1 = min(i0 + 1, size - 1)
            res.append((i0, i1, src - i0))
        return res

    rows = []
    for y0, y1, ly in taps(out_h, h):
        for x0, x1, lx in taps(out_w, w):
            rows.append((1 - ly) * ((1 - lx) * grid[y0, x0] + lx * grid[y0, x1])
                        + ly * ((1 - lx) * grid[y1, x0] + lx * grid[y1, x1]))
    return torch.stack(rows)


def blocks(p, prefix, x, layers, heads, angles=None, causal=False):
    for i in range(layers):
        q = f"{prefix}transformer.resblocks.{i}."
        h = ln(x, p[q + "ln_1.weight"], p[q + "ln_1.bias"])
        x = x + mha(h, h, p[q + "attn.in_proj_weight"], p[q + "attn.in_proj_bias"],
                    p[q + "attn.out_proj.weight"], p[q + "attn.out_proj.bias"], heads, angles, causal)
        h = ln(x, p[q + "ln_2.weight"], p[q + "ln_2.bias"])
        x = x + gelu(h @ p[q + "mlp.c_fc.weight"].T + p[q + "mlp.c_fc.bias"]) @ p[q + "mlp.c_proj.weight"].T \
            + p[q + "mlp.c_proj.bias"]
    return x


def ref_vision(p, cfg, img):
    """float64 PE vision tower from Meta-layout weights `p` (prefix `visual.` stripped)."""
    B, _, H, W = img.shape
    P, w = cfg.patch_size, cfg.width
    gh, gw = H // P, W // P
    patches = img.reshape(B, 3, gh, P, gw, P).permute(0, 2, 4, 1, 3, 5).reshape(B, gh * gw, 3 * P * P)
    x = patches @ p["conv1.weight"].reshape(w, -1).T  # the conv as a matmul, row-major patches
    pos = p["positional_embedding"]
    n_cls = 1 if cfg.use_cls_token else 0
    patch_pos = pos[n_cls:]
    if (gh, gw) != (cfg.grid, cfg.grid):
        patch_pos = bilinear(patch_pos.reshape(cfg.grid, cfg.grid, w), gh, gw)
    if cfg.use_cls_token:
        x = torch.cat([p["class_embedding"].expand(B, 1, w), x], 1)
        patch_pos = torch.cat([pos[:1], patch_pos])
    x = ln(x + patch_pos, p["ln_pre.weight"], p["ln_pre.bias"])
    angles = torch.tensor(hand_angles(gh, gw, cfg.head_dim, cfg.use_cls_token), dtype=torch.float64)
    x = blocks(p, "", x, cfg.layers, cfg.heads, angles=angles)
    x = ln(x, p["ln_post.weight"], p["ln_post.bias"])
    # attention pooling: probe attends to all tokens; no residual from the probe
    o = mha(p["attn_pool.probe"].expand(B, 1, w), x, p["attn_pool.attn.in_proj_weight"],
            p["attn_pool.attn.in_proj_bias"], p["attn_pool.attn.out_proj.weight"],
            p["attn_pool.attn.out_proj.bias"], cfg.pool_heads)
    h = ln(o, p["attn_pool.layernorm.weight"], p["attn_pool.layernorm.bias"])
    o = o + gelu(h @ p["attn_pool.mlp.c_fc.weight"].T + p["attn_pool.mlp.c_fc.bias"]) \
        @ p["attn_pool.mlp.c_proj.weight"].T + p["attn_pool.mlp.c_proj.bias"]
    return o[:, 0] @ p["proj"]


def ref_text(p, cfg, tokens):
    x = p["token_embedding.weight"][tokens] + p["positional_embedding"][: tokens.shape[1]]
    x = blocks(p, "", x, cfg.layers, cfg.heads, causal=True)
    x = ln(x, p["ln_final.weight"], p["ln_final.bias"])
    eot = [row.tolist().index(max(row.tolist())) for row in tokens]  # position of the largest id (EOT)
    return torch.stack([x[b, i] for b, i in enumerate(eot)]) @ p["text_projection"]


def meta_params(model, prefix=""):
    """Weights in Meta's layout as float64, prefix stripped (the reference reads Meta's key names)."""
    sd = to_meta_layout(model.state_dict())
    return {k[len(prefix):]: v.double() for k, v in sd.items() if k.startswith(prefix)}


def randomize_(model):
    # Random LayerNorm affine and biases too (init leaves them 1/0, which would hide mistakes).
    with torch.no_grad():
        for name, prm in model.named_parameters():
            if name.endswith("bias") or "ln" in name or "layernorm" in name:
                prm.normal_(0, 0.5 if name.endswith("bias") else 0.3).add_(0 if name.endswith("bias") else 1)


@pytest.mark.parametrize("size", [(24, 24), (32, 40)])  # native grid 3x3, and 4x5 (pos-emb resize, non-square)
@pytest.mark.parametrize("cls_token", [True, False])
def test_vision_forward_matches_float64_reference(size, cls_token):
    torch.manual_seed(1)
    cfg = VisionConfig(24, 8, 32, 2, 2, 48, 16, use_cls_token=cls_token, pool_heads=4)
    model = VisionTransformer(cfg).eval()
    randomize_(model)
    img = torch.randn(2, 3, *size)
    with torch.no_grad():
        out = model(img)
    ref = ref_vision(meta_params(model), cfg, img.double())
    assert out.shape == (2, 16)
    torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-5)


def test_embeddings_join_half_precision_patches_in_fp32_under_autocast():
    """As Meta's forward: under autocast the patch embedding is half precision, and the CLS token and
    positional embedding are added to it in fp32 (not rounded to half first)."""
    torch.manual_seed(1)
    cfg = VisionConfig(24, 8, 32, 2, 2, 48, 16, pool_heads=4)
    model = VisionTransformer(cfg).eval()
    img = torch.randn(2, 3, 24, 24)
    seen = []
    model.ln_pre.register_forward_hook(lambda module, args, out: seen.append(args[0]))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        model(img)
        patches = model.conv1(img).flatten(2).transpose(1, 2)
    assert patches.dtype == torch.bfloat16 and seen[0].dtype == torch.float32
    expected = torch.cat([model.class_embedding.expand(2, 1, -1), patches.float()], dim=1) + model.positional_embedding
    torch.testing.assert_close(seen[0], expected, rtol=0, atol=0)


def test_text_forward_matches_float64_reference():
    torch.manual_seed(2)
    model = CLIP(TINY).eval()
    randomize_(model)
    tokens = torch.tensor([[48, 5, 7, 49, 0, 0, 0, 0], [48, 3, 3, 3, 3, 3, 9, 49]])  # 49 = EOT (largest id)
    with torch.no_grad():
        out = model.encode_text(tokens)
        img_out = model.encode_image(torch.ones(1, 3, 24, 24))
    ref = ref_text(meta_params(model), TINY.text, tokens)
    torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-5)
    # CLIP.encode_image is the vision tower; the forward returns normalised features and exp(logit_scale)
    torch.testing.assert_close(img_out.double(), ref_vision(meta_params(model, "visual."), TINY.vision,
                                                            torch.ones(1, 3, 24, 24, dtype=torch.float64)),
                               rtol=1e-4, atol=1e-5)
    im, tx, scale = model(torch.ones(1, 3, 24, 24), tokens)
    torch.testing.assert_close(im.norm(dim=-1), torch.ones(1))
    torch.testing.assert_close(tx.norm(dim=-1), torch.ones(2))
    assert scale.item() == pytest.approx(1 / 0.07, rel=1e-6)


def test_forward_features_layer_idx_and_activation_checkpointing(replayed_blocks):
    calls = replayed_blocks
    torch.manual_seed(3)
    model = VisionTransformer(TINY.vision)
    img = torch.randn(2, 3, 24, 24)
    # layer_idx=k runs blocks 0..k (Meta's truncate(k)); norm=False skips ln_post
    partial = model.forward_features(img, norm=False, layer_idx=0)
    rest = model.transformer.resblocks[1](partial)
    torch.testing.assert_close(model.ln_post(rest), model.forward_features(img))
    # activation checkpointing of the first blocks, some or all, changes memory, not values or gradients
    model.train()
    model(img).square().sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    assert not calls
    resblocks = list(model.transformer.resblocks)
    for first in (1, len(resblocks)):
        model.zero_grad()
        model.checkpoint_blocks = first
        assert model.transformer.checkpoint_blocks == first
        model(img).square().sum().backward()
        assert len(calls) == first and all(c is b for c, b in zip(calls, resblocks[:first]))
        calls.clear()
        for g, p in zip(grads, model.parameters()):
            torch.testing.assert_close(p.grad, g)
    with torch.no_grad():  # nothing to recompute without a graph
        model(img)
    assert not calls
    for stack in (model, model.transformer):
        with pytest.raises(ValueError, match=">= 0"):
            stack.checkpoint_blocks = -1


# ---------------------------------------------------------------------------------------------------------
# parameter counts and keys (Meta's config.py and checkpoints) — big configs built on the meta device (no memory, no time)

COUNTS = {  # vision tower, text tower + logit_scale, CLIP total
    "PE-Core-T16-384": (6_140_544, 63_405_057, 69_545_601),
    "PE-Core-S16-384": (23_782_656, 63_405_057, 87_187_713),
    "PE-Core-B16-224": (93_672_960, 353_986_561, 447_659_521),
    "PE-Core-L14-336": (317_151_232, 353_986_561, 671_137_793),
    "PE-Core-G14-448": (1_882_032_640, 537_233_921, 2_419_266_561),
}


@pytest.mark.parametrize("name", list(COUNTS))
def test_parameter_counts_match_meta(name):
    with torch.device("meta"):
        model = CLIP(get_config(name))
    vision = sum(p.numel() for p in model.visual.parameters())
    total = sum(p.numel() for p in model.parameters())
    assert (vision, total - vision, total) == COUNTS[name]
    assert not list(model.buffers())  # RoPE tables and the causal mask are not state


def test_l14_breakdown_and_meta_keys():
    with torch.device("meta"):
        model = CLIP(get_config("PE-Core-L14-336"))
    v = model.visual
    n = lambda m: sum(p.numel() for p in m.parameters())
    assert n(v.transformer.resblocks[0]) == 12_596_224
    assert n(v.attn_pool) == 12_595_200
    assert v.positional_embedding.shape == (577, 1024)
    sd = to_meta_layout(model.state_dict())
    assert len(sd) == 601
    shapes = {k: tuple(t.shape) for k, t in sd.items()}
    for key, shape in {
        "positional_embedding": (32, 1024), "text_projection": (1024, 1024), "logit_scale": (),
        "token_embedding.weight": (49408, 1024),
        "transformer.resblocks.23.attn.in_proj_weight": (3072, 1024),
        "transformer.resblocks.0.attn.in_proj_bias": (3072,),
        "visual.class_embedding": (1024,), "visual.positional_embedding": (577, 1024),
        "visual.proj": (1024, 1024), "visual.conv1.weight": (1024, 3, 14, 14),
        "visual.transformer.resblocks.23.attn.in_proj_weight": (3072, 1024),
        "visual.transformer.resblocks.0.mlp.c_proj.weight": (1024, 4096),
        "visual.attn_pool.probe": (1, 1, 1024), "visual.attn_pool.attn.in_proj_weight": (3072, 1024),
        "visual.attn_pool.attn.out_proj.bias": (1024,), "visual.attn_pool.layernorm.weight": (1024,),
        "visual.attn_pool.mlp.c_fc.weight": (4096, 1024),
    }.items():
        assert shapes[key] == shape, key


def test_configs_and_unknown_name():
    assert set(CONFIGS) == {*COUNTS, "demo-tiny"}
    tiny = get_config("demo-tiny")
    assert (tiny.vision.grid, tiny.vision.head_dim, tiny.text.vocab_size) == (8, 32, 1024)
    assert get_config(tiny) is tiny
    with pytest.raises(KeyError, match="PE-Core-L14-336"):
        get_config("PE-Core-L14")


def test_configs_have_meta_heads_and_layer_norm_eps():
    """Head counts change no parameter count (test_parameter_counts_match_meta cannot see them) but do change every
    attention output: Meta's config.py gives 64-wide heads (G14's vision tower 96), an 8-head attention-pooling
    probe and LayerNorm eps 1e-5 throughout."""
    heads = {name: (c.vision.heads, c.vision.pool_heads, c.text.heads) for name, c in CONFIGS.items()}
    assert heads == {"PE-Core-T16-384": (3, 8, 8), "PE-Core-S16-384": (6, 8, 8), "PE-Core-B16-224": (12, 8, 16),
                     "PE-Core-L14-336": (16, 8, 16), "PE-Core-G14-448": (16, 8, 20), "demo-tiny": (2, 8, 2)}
    assert {c.vision.ln_eps for c in CONFIGS.values()} == {c.text.ln_eps for c in CONFIGS.values()} == {1e-5}


@pytest.mark.parametrize("kwargs, says", [
    (dict(image_size=30), "image_size 30 is not a multiple of patch_size 8"),
    (dict(heads=3), "width 32 must be divisible by heads 3 and pool_heads 4"),
    (dict(pool_heads=3), "width 32 must be divisible by heads 2 and pool_heads 3"),
    (dict(heads=16, pool_heads=16), "head_dim 2 must be a multiple of 4 for 2D RoPE"),
    (dict(width=24, heads=4, pool_heads=4, mlp_dim=48), "head_dim 6 must be a multiple of 4 for 2D RoPE"),
])
def test_vision_config_refuses_shapes_the_model_cannot_take(kwargs, says):
    with pytest.raises(ValueError, match=f"^{re.escape(says)}$"):
        replace(TINY.vision, **kwargs)


def test_text_config_refuses_a_width_not_divisible_by_heads():
    with pytest.raises(ValueError, match="^width 24 must be divisible by heads 5$"):
        replace(TINY.text, heads=5)


def test_image_transform_squashes_and_normalises():
    from PIL import Image

    img = Image.new("RGB", (50, 20), (255, 0, 102))  # not square: squashed, not cropped
    x = image_transform(24)(img)
    assert x.shape == (3, 24, 24)
    torch.testing.assert_close(x[:, 0, 0], torch.tensor([1.0, -1.0, 102 / 255 * 2 - 1]))
    gray = Image.new("L", (30, 30), 0)  # converted to RGB
    assert image_transform(24)(gray).shape == (3, 24, 24)
