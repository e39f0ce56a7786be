"""Method builders (replication/methods.py) on demo-tiny: what trains, gradients, LR groups, trainable state."""
import copy

import pytest
import torch

from replication.config import get_config
from replication.heads import DeepHead, make_heads
from replication.labels import NUM_CLASSES
from replication.lora import adapter_modules, export_merged
from replication.methods import METHODS, build_method
from replication.mtlora import TaskLoRALinear
from replication.pe import VisionTransformer

ALL = ("age", "gender", "emotion")


def _vision(seed=0):
    torch.manual_seed(seed)
    return VisionTransformer(get_config("demo-tiny").vision)


def _images(n=4, seed=1):
    return torch.randn(n, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


def test_heads_structure_and_count():
    head = DeepHead(1024, 9, use_bn=False)
    assert sum(p.numel() for p in head.parameters()) == 1024 * 1024 + 1024 + 1024 * 9 + 9  # §3.3: 1,058,825
    bn = DeepHead(1024, 9, use_bn=True)
    assert isinstance(bn[0], torch.nn.BatchNorm1d) and isinstance(bn[1], torch.nn.Dropout) and bn[1].p == 0.5
    assert [type(m).__name__ for m in bn][1:] == [type(m).__name__ for m in head]
    heads = make_heads(ALL, 8, use_bn=True)
    assert {t: h[-1].out_features for t, h in heads.items()} == NUM_CLASSES
    with pytest.raises(KeyError, match="unknown task"):
        make_heads(("height",), 8, use_bn=True)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("tasks", [("emotion",), ALL])
def test_gradients_reach_exactly_what_the_method_trains(method, tasks):
    adapted = build_method(method, tasks, _vision(), rank=4)
    model = adapted.model.train()
    # non-zero B everywhere so that A and the DoRA magnitudes get non-trivial gradients too
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_b" in name or "shared_b" in name:
                p.normal_(0, 0.1)
    logits = model(_images())
    assert set(logits) == set(tasks)
    assert all(logits[t].shape == (4, NUM_CLASSES[t]) for t in tasks)
    sum(v.square().sum() for v in logits.values()).backward()
    grouped = {id(p) for g in adapted.param_groups for p in g["params"]}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            assert p.grad is None, f"{method}: frozen {name} got a gradient"
            continue
        assert id(p) in grouped, f"{method}: trainable {name} is in no optimizer group"
        if ".shared_" in name:  # the zero-scaled shared pair the thesis's MTLoRA kept: never used
            assert p.grad is None
        else:
            assert p.grad is not None and p.grad.abs().sum() > 0, f"{method}: {name} got no gradient"


def _trainable(adapted):
    return {n for n, p in adapted.model.named_parameters() if p.requires_grad}


def test_what_each_method_trains():
    lp = build_method("lp", ALL, _vision())
    assert _trainable(lp) == {n for n, _ in lp.model.heads.named_parameters(prefix="heads")}
    assert lp.model.frozen_backbone and not any(isinstance(m, torch.nn.BatchNorm1d) for m in lp.model.modules())

    ap = build_method("ap", ALL, _vision())
    assert {n.split(".")[1] for n in _trainable(ap) if n.startswith("encoder.")} == {"attn_pool"}
    assert not ap.model.frozen_backbone

    ft4 = build_method("ft4", ("age",), _vision())
    blocks = {n.split(".")[3] for n in _trainable(ft4) if ".resblocks." in n}
    assert blocks == {"2", "3", "4", "5"}  # the last 4 of demo-tiny's 6 blocks
    assert "encoder.proj" not in _trainable(ft4) and "encoder.ln_post.weight" not in _trainable(ft4)

    dora = build_method("dora", ALL, _vision(), rank=4)
    suffixes = {n.rsplit(".", 1)[1] for n in _trainable(dora) if n.startswith("encoder.")}
    assert suffixes == {"lora_a", "lora_b", "magnitude"}
    assert not any("attn_pool.attn.in_proj" in n for n in _trainable(dora))  # raw Parameter, not adapted
    lora = build_method("lora", ALL, _vision(), rank=4)
    assert {n.rsplit(".", 1)[1] for n in _trainable(lora) if n.startswith("encoder.")} == {"lora_a", "lora_b"}


def test_learning_rates_follow_the_thesis_and_loraplus():
    groups = {g["name"]: g for g in build_method("dora", ALL, _vision(), rank=4).param_groups}
    assert groups["heads"]["lr"] == 1e-4 and groups["attn_pool_adapters"]["lr"] == 1e-4
    assert groups["backbone_lora_a"]["lr"] == 1e-5
    assert groups["backbone_lora_b"]["lr"] == pytest.approx(6 * 1e-5)  # LoRA+: eta_B = 6 eta_A
    assert groups["backbone_dora_magnitude"]["lr"] == 1e-5
    assert all(g["weight_decay"] == 0.01 for g in groups.values())
    ft4 = {g["name"]: g["lr"] for g in build_method("ft4", ALL, _vision()).param_groups}
    assert ft4 == {"heads": 1e-4, "attn_pool": 1e-4, "last4_blocks": 1e-5}
    custom = {g["name"]: g["lr"] for g in build_method("lora", ALL, _vision(), rank=4, lr_backbone=2e-5,
                                                        loraplus_ratio=3.0).param_groups}
    assert custom["backbone_lora_b"] == pytest.approx(6e-5)
    adapted = build_method("mtlora", ALL, _vision(), rank=4)
    mt = {g["name"]: g for g in adapted.param_groups}
    assert mt["task_pool"]["lr"] == 1e-4 and mt["backbone_lora_b"]["lr"] == pytest.approx(6e-5)
    assert "backbone_dora_magnitude" not in mt  # frozen by default (see mtlora.py)
    block_l = [m for m in adapted.model.encoder.block.modules() if isinstance(m, TaskLoRALinear)]
    b_ids = {id(p) for p in mt["backbone_lora_b"]["params"]}
    assert len(block_l) == 6 and all(id(p) in b_ids for m in block_l for p in m.lora_b.values())


@pytest.mark.parametrize("method", ["lp", "ap", "dora", "mtlora"])
def test_trainable_state_roundtrip(method):
    adapted = build_method(method, ALL, _vision(), rank=4)
    model = adapted.model
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    model.train()
    model(_images(4))  # update BN running statistics
    model.eval()
    x = _images(2, seed=5)
    expected = model(x)
    state = model.trainable_state_dict()
    if method != "lp":
        assert any(k.endswith("running_mean") for k in state)  # BN buffers travel with the heads
    assert sum(v.numel() for v in state.values()) < sum(v.numel() for v in model.state_dict().values()) / 2

    other = build_method(method, ALL, _vision(), rank=4).model.eval()  # same backbone, fresh trainables
    other.load_trainable_state_dict(copy.deepcopy(state))
    got = other(x)
    for t in ALL:
        torch.testing.assert_close(got[t], expected[t])
    with pytest.raises(KeyError, match="missing"):
        other.load_trainable_state_dict({k: v for k, v in state.items() if not k.startswith("heads.age")})


def test_lp_embed_is_shared_and_classify_matches_forward():
    model = build_method("lp", ALL, _vision()).model.eval()
    x = _images(3)
    emb = model.embed(x)
    assert all(emb[t] is emb["age"] for t in ALL) and emb["age"].shape == (3, 64)
    out = model(x)
    cached = model.classify({t: e.clone() for t, e in emb.items()})
    for t in ALL:
        torch.testing.assert_close(cached[t], out[t])


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown method"):
        build_method("zero_shot", ALL, _vision())
    with pytest.raises(ValueError, match="at least one task"):
        build_method("lp", (), _vision())
    with pytest.raises(KeyError, match="unknown task"):
        build_method("lp", ("height",), _vision())


@pytest.mark.parametrize("method", ["dora", "mtlora"])
def test_merged_export_for_inference(method):
    model = build_method(method, ALL, _vision(), rank=4).model
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_b" in name:
                p.normal_(0, 0.05)
    model.eval()
    x = _images(2)
    expected = model(x)
    plain = export_merged(model)
    assert not list(adapter_modules(plain))  # TA/backbone adapters folded into plain nn.Linear layers
    if method == "dora":
        assert set(plain.encoder.state_dict()) == set(VisionTransformer(get_config("demo-tiny").vision).state_dict())
    got = plain(x)
    for t in ALL:
        torch.testing.assert_close(got[t], expected[t], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("method", ["dora", "mtlora"])
def test_activation_checkpointing_changes_memory_not_numbers(method, replayed_blocks):
    """The full profile checkpoints LoRA/DoRA/MTLoRA's blocks: the replayed blocks draw the same dropout
    masks, so losses and gradients are bit-identical to a plain step (engine: an execution-only field)."""
    calls = replayed_blocks
    vision = _vision()
    model = build_method(method, ALL, vision).model.train()
    images = _images()

    def step(first):
        model.zero_grad(set_to_none=True)
        vision.checkpoint_blocks = first
        torch.manual_seed(5)
        loss = sum(o.square().mean() for o in model(images).values())
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    resblocks = list(vision.transformer.resblocks)  # MTLoRA's stack already lacks its rebuilt last block
    loss0, grads0 = step(0)
    assert len(grads0) > 10 and not calls
    for first, checkpointed in ((2, resblocks[:2]), (99, resblocks)):  # the first two blocks; all, each once
        loss1, grads1 = step(first)
        assert len(calls) == len(checkpointed) and all(c is b for c, b in zip(calls, checkpointed))
        calls.clear()
        assert torch.equal(loss0, loss1) and grads0.keys() == grads1.keys()
        assert all(torch.equal(grads0[n], grads1[n]) for n in grads0)


def test_deeper_head_matches_hand_computation():
    """§3.3 deeper head, eval mode: Linear(d, C)(GELU(Linear(d, d) x)) with the exact (erf) GELU."""
    import math

    torch.manual_seed(0)
    head = DeepHead(6, 3, use_bn=False).double().eval()
    x = torch.randn(4, 6, dtype=torch.float64)
    h = x @ head[1].weight.T + head[1].bias
    h = h * 0.5 * (1 + torch.erf(h / math.sqrt(2)))
    torch.testing.assert_close(head(x), h @ head[3].weight.T + head[3].bias, rtol=1e-12, atol=1e-12)


def test_dropouts_reach_the_layers():
    """head_dropout reaches every head; LoRA dropout defaults to 0.5 (the thesis's code) on every adapter,
    MTLoRA's task-specific ones included."""
    model = build_method("lora", ALL, _vision(), rank=4, head_dropout=0.3).model
    assert all(h[1].p == 0.3 for h in model.heads.values())
    adapters = [m for _, m in adapter_modules(model)]
    assert adapters and all(m.dropout.p == 0.5 for m in adapters)
    mt = build_method("mtlora", ALL, _vision(), rank=4).model
    ts = [m for m in mt.modules() if isinstance(m, TaskLoRALinear)]
    assert len(ts) == 12 and all(m.dropout.p == 0.5 for m in ts)


def test_heads_read_proj_output_but_mtlora_heads_read_the_pooled_width():
    """On a tower whose width (32) differs from its output_dim (16): heads of the projected methods take 16
    inputs, MTLoRA's (no proj) take 32, and both forwards run."""
    from replication.config import VisionConfig

    cfg = VisionConfig(image_size=24, patch_size=8, width=32, layers=2, heads=2, mlp_dim=48, output_dim=16,
                       pool_heads=4)
    for method, dim in (("lora", 16), ("mtlora", 32)):
        torch.manual_seed(0)
        model = build_method(method, ALL, VisionTransformer(cfg), rank=4).model.eval()
        assert all(h[0].num_features == dim for h in model.heads.values())
        logits = model(torch.randn(2, 3, 24, 24))
        assert {t: v.shape for t, v in logits.items()} == {t: (2, NUM_CLASSES[t]) for t in ALL}


def test_bn_head_statistics_and_eval_output_match_hand_computation():
    """§3.4 BN head, BatchNorm1d with torch's defaults (as the thesis's code): one training batch moves the running
    statistics by momentum 0.1 (unbiased variance), and eval mode normalises with them (eps 1e-5) before the
    deeper head: Linear(d, C)(GELU(Linear(d, d) BN(x)))."""
    import math

    torch.manual_seed(0)
    head = DeepHead(6, 3, use_bn=True).double()
    with torch.no_grad():
        head[0].weight.normal_(1, 0.3)
        head[0].bias.normal_(0, 0.5)
    x = torch.randn(16, 6, dtype=torch.float64) * 2 + 1
    head.train()
    head(x)
    mean, var = x.mean(0), x.var(0, unbiased=True)
    torch.testing.assert_close(head[0].running_mean, 0.1 * mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(head[0].running_var, 0.9 + 0.1 * var, rtol=1e-12, atol=1e-12)
    head.eval()
    z = torch.randn(4, 6, dtype=torch.float64)
    n = (z - 0.1 * mean) / torch.sqrt(0.9 + 0.1 * var + 1e-5) * head[0].weight + head[0].bias
    h = n @ head[2].weight.T + head[2].bias
    h = h * 0.5 * (1 + torch.erf(h / math.sqrt(2)))
    torch.testing.assert_close(head(z), h @ head[4].weight.T + head[4].bias, rtol=1e-12, atol=1e-12)
