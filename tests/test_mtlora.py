"""The thesis's MTLoRA (replication/mtlora.py) on demo-tiny: structure, equivalence at init, task features."""
import copy

import pytest
import torch
from torch import nn

from replication.config import get_config
from replication.lora import DoRALinear, adapter_modules
from replication.mtlora import MTLoRAEncoder, TaskLoRABlock, TaskLoRALinear
from replication.pe import VisionTransformer

TASKS = ("age", "gender", "emotion")
RANK, ALPHA = 4, 3.0


def _vision(seed=0):
    torch.manual_seed(seed)
    return VisionTransformer(get_config("demo-tiny").vision).eval()


def _images(n=2, seed=1):
    return torch.randn(n, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


def test_task_lora_linear_matches_float64_formula():
    torch.manual_seed(0)
    layer = TaskLoRALinear(nn.Linear(8, 5).double(), TASKS, rank=RANK, alpha=ALPHA)
    with torch.no_grad():
        for t in TASKS:
            layer.lora_b[t].normal_()
    x = torch.randn(3, 8, dtype=torch.float64)
    for t in TASKS:
        expected = x @ (layer.weight + ALPHA / RANK * layer.lora_b[t] @ layer.lora_a[t]).T + layer.bias
        torch.testing.assert_close(layer(x, t), expected, rtol=1e-12, atol=1e-12)
    # the zero-scaled shared pair exists (it is counted) but plays no part in the output
    assert layer.shared_a.shape == (RANK, 8) and layer.shared_b.shape == (5, RANK)
    assert not layer.weight.requires_grad


def test_split_block_equals_the_fused_block_at_init():
    vision = _vision()
    x = torch.randn(2, 65, 64)
    vision.rope.update_grid(8, 8)
    block = vision.transformer.resblocks[-1]
    expected = block(x)
    task_block = TaskLoRABlock(block, TASKS, rank=RANK)
    out = task_block({t: x for t in TASKS})
    for t in TASKS:
        torch.testing.assert_close(out[t], expected, rtol=1e-5, atol=1e-5)


def test_structure():
    vision = _vision()
    n_blocks = len(vision.transformer.resblocks)
    enc = MTLoRAEncoder(vision, TASKS, rank=RANK)
    assert len(enc.vision.transformer.resblocks) == n_blocks - 1  # block L lives in enc.block
    assert not hasattr(enc.vision, "attn_pool") and isinstance(enc.vision.proj, nn.Parameter)
    assert set(enc.pool.probe) == set(TASKS)
    dora = [m for _, m in adapter_modules(enc.vision)]
    assert len(dora) == 4 * (n_blocks - 1) and all(isinstance(m, DoRALinear) for m in dora)
    assert not any(m.magnitude.requires_grad for m in dora)  # frozen by default (thesis count)
    assert all(m.magnitude.requires_grad for _, m in adapter_modules(
        MTLoRAEncoder(_vision(), TASKS, rank=RANK, train_magnitude=True).vision))
    ts = [m for m in enc.modules() if isinstance(m, TaskLoRALinear)]
    assert len(ts) == 12  # block L: q, k, v, out_proj, c_fc, c_proj; pooling: the same six
    with pytest.raises(ValueError, match="at least one task"):
        MTLoRAEncoder(_vision(), (), rank=RANK)


def test_equals_the_plain_pooled_feature_at_init_and_differs_per_task_once_trained():
    plain = _vision()
    enc = MTLoRAEncoder(copy.deepcopy(plain), TASKS, rank=RANK, alpha=ALPHA).eval()
    x = _images()
    reference = plain.pool(plain.forward_features(x))  # pooled, before proj: what MTLoRA heads read
    feats = enc(x)
    for t in TASKS:
        torch.testing.assert_close(feats[t], reference, rtol=1e-5, atol=1e-5)

    # give the emotion task (only) its own block-L adapters: only its features move
    with torch.no_grad():
        for m in enc.block.modules():
            if isinstance(m, TaskLoRALinear):
                m.lora_b["emotion"].normal_(0, 0.2)
    feats = enc(x)
    torch.testing.assert_close(feats["age"], reference, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(feats["gender"], reference, rtol=1e-5, atol=1e-5)
    assert (feats["emotion"] - reference).abs().max() > 1e-3

    # the same through a task pooling adapter of the gender task
    with torch.no_grad():
        enc.pool.c_fc.lora_b["gender"].normal_(0, 0.2)
    feats = enc(x)
    assert (feats["gender"] - reference).abs().max() > 1e-3
    torch.testing.assert_close(feats["age"], reference, rtol=1e-5, atol=1e-5)
    assert all((feats[a] - feats[b]).abs().max() > 1e-3 for a, b in (("gender", "emotion"), ("age", "emotion")))


def test_equals_the_plain_pooled_feature_with_random_biases_and_layernorms():
    """At init the rebuilt block L and task pooling compute the plain tower's function for *any* weights: with
    the default init the q|k|v biases are 0 and the LayerNorms 1/0, which would hide a mis-split bias or a
    swapped ln_1/ln_2."""
    plain = _vision()
    with torch.no_grad():
        for name, p in plain.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.5)
            elif "ln" in name or "layernorm" in name:
                p.normal_(1, 0.3)
    enc = MTLoRAEncoder(copy.deepcopy(plain), TASKS, rank=RANK, alpha=ALPHA).eval()
    x = _images()
    reference = plain.pool(plain.forward_features(x))
    feats = enc(x)
    for t in TASKS:
        torch.testing.assert_close(feats[t], reference, rtol=1e-5, atol=1e-5)


def test_task_lora_dropout_acts_on_each_task_s_low_rank_branch():
    """y_t = W0 x + b + s B_t A_t dropout(x) in training (dropout on every TS adapter's input)."""
    torch.manual_seed(0)
    layer = TaskLoRALinear(nn.Linear(8, 5).double(), TASKS, rank=RANK, alpha=ALPHA, dropout=0.5).train()
    with torch.no_grad():
        layer.lora_b["gender"].normal_()
    x = torch.randn(3, 8, dtype=torch.float64)
    torch.manual_seed(4)
    y = layer(x, "gender")
    torch.manual_seed(4)
    z = layer.dropout(x)
    assert not torch.equal(z, x)
    delta = ALPHA / RANK * layer.lora_b["gender"] @ layer.lora_a["gender"]
    torch.testing.assert_close(y, x @ layer.weight.T + z @ delta.T + layer.bias, rtol=1e-12, atol=1e-12)
