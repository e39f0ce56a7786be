"""`bench` on CPU: a smoke run of every method on demo-tiny, with its FLOP counts checked against formulas.

The expected FLOPs are derived here by hand from the architecture (docs/pe-core-architecture.md) and the
methods as the thesis describes them (§3.3–3.6.1), not from replication code: 2 x multiply-accumulates of
every matmul, convolution and attention product, a training step charged 3x for the ops in the autograd
graph and 1x for those outside it (the bench's stated convention).
"""
import json

import pytest
import torch

from replication.bench import FLOP_CONVENTION, SavedTensors, cli
from replication.config import get_config

BATCH = 4
CLASSES = {"age": 9, "gender": 2, "emotion": 7}
RANK = 64  # build_method's default (§3.6)
METHODS = ("lp", "ap", "ft4", "lora", "dora", "mtlora")


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two shared cores: one thread runs this several times faster than two
    try:
        rc = cli(["--config", "demo-tiny", "--batch", str(BATCH), "--steps", "1", "--warmup", "0",
                  "--dtype", "fp32", "--device", "cpu", "--methods", ",".join(METHODS), "--out", str(out),
                  "--data-loading", "--workers", "0", "--loader-images", "8", "--loader-batches", "3"])
    finally:
        torch.set_num_threads(threads)
    assert rc == 0
    return json.loads(out.read_text())


def expected_flops(config="demo-tiny", B=BATCH):
    """{method: (training-step FLOPs, inference FLOPs)} for a batch of B, plus LP's cache pass, by hand."""
    v = get_config(config).vision
    w, L, mlp, N, r, d = v.width, v.layers, v.mlp_dim, v.grid**2 + 1, RANK, v.output_dim
    # multiply-accumulates per image
    conv = v.grid**2 * (3 * v.patch_size**2) * w
    qkv, o, fc, pr = w * 3 * w, w * w, w * mlp, mlp * w          # the four linears of a block, per token
    block = N * (qkv + o + fc + pr) + 2 * N * N * w               # + QK^T and AV over all heads
    pool_q = w * w                                                # the probe's query (one token)
    pool = pool_q + N * 2 * w * w + 2 * N * w + w * w + w * 4 * w + 4 * w * w  # k,v; attention; out; MLP 4w
    proj = w * d

    def heads(dim):
        return sum(dim * dim + dim * c for c in CLASSES.values())  # Linear(d,d) -> GELU -> Linear(d,C)

    def lora(din, dout, tokens=N):
        return tokens * r * (din + dout)                          # x A^T then (.) B^T

    lora_block = lora(w, 3 * w) + lora(w, w) + lora(w, mlp) + lora(mlp, w)
    lora_pool = lora(w, w, 1) + lora(w, 4 * w, 1) + lora(4 * w, w, 1)
    # DoRA: ||W0 + BA|| once per forward (not per image), detached -> outside the graph
    norm_block = r * (3 * w * w + w * w + mlp * w + w * mlp)
    norm_pool = r * (w * w + 4 * w * w + w * 4 * w)

    def step(on_graph, off_graph, off_once=0):
        return 2 * B * (3 * on_graph + off_graph) + 2 * off_once

    vision = conv + L * block + pool + proj
    out = {
        # §3.3 LP: heads only, on cached embeddings; the cache pass is the frozen encoder
        "lp": (step(heads(d), 0), 2 * B * (vision + heads(d))),
        # §3.4 AP: the encoder's blocks run forward only; pooling, proj and heads backpropagate
        "ap": (step(pool + proj + heads(d), conv + L * block), 2 * B * (vision + heads(d))),
        # §3.5 FT4: the first L-4 blocks forward only
        "ft4": (step(4 * block + pool + proj + heads(d), conv + (L - 4) * block), 2 * B * (vision + heads(d))),
        # §3.6 LoRA: everything is in the graph except the patch conv, block 0's frozen q|k|v product (its input
        # needs no grad) and the pooler's frozen probe query
        "lora": (step(L * block - N * qkv + L * lora_block + pool - pool_q + lora_pool + proj + heads(d),
                      conv + N * qkv + pool_q),
                 2 * B * (vision + heads(d))),  # merged: no adapter cost at inference
    }
    # DoRA: LoRA's products (dropout on the low-rank branch only, W0 once) + the weight norms, once per step
    out["dora"] = (step(L * block - N * qkv + L * lora_block + pool - pool_q + lora_pool + proj + heads(d),
                        conv + N * qkv + pool_q, L * norm_block + norm_pool),
                   2 * B * (vision + heads(d)))
    # §3.6.1 MTLoRA: TA-DoRA blocks 0..L-2 (magnitudes frozen), block L and the pooling once per task with
    # TS-LoRA on q, k, v, out, c_fc, c_proj; probes trainable; heads on the width-d pooled vector, no proj
    T = len(CLASSES)
    ta = (L - 1) * (block + lora_block)
    ts_block = block + 3 * lora(w, w) + lora(w, w) + lora(w, mlp) + lora(mlp, w)
    ts_pool = pool + lora(w, w, 1) + 2 * lora(w, w) + lora_pool
    out["mtlora"] = (step(ta - N * qkv + T * (ts_block + ts_pool) + heads(w),
                          conv + N * qkv, (L - 1) * norm_block),
                     2 * B * (conv + (L - 1) * block + T * (ts_block + ts_pool) + heads(w)))
    out["lp_cache"] = 2 * B * vision
    return out


def test_every_method_has_a_row_with_positive_throughput(result):
    assert [r["method"] for r in result["rows"]] == list(METHODS)
    for r in result["rows"]:
        for part in ("train", "infer"):
            assert r[part]["images_per_s"] > 0 and r[part]["step_ms"] > 0 and r[part]["tflops"] > 0
            assert r[part]["peak_alloc_gib"] is None  # CPU: memory is not measured
        assert r["train"]["executed_gflop_per_image"] > 0
    rows = {r["method"]: r for r in result["rows"]}
    assert rows["lp"]["train_input"] == "cached features" and rows["lp"]["cache"]["images_per_s"] > 0
    assert rows["lora"]["infer"]["merged"] and rows["dora"]["infer"]["merged"] and not rows["ap"]["infer"]["merged"]
    # activations kept for backward grow with what backpropagates: heads < pooling < 4 blocks < all blocks;
    # DoRA also keeps each adapted layer's directional output for its magnitude's gradient
    saved = [rows[m]["train"]["saved_activation_gib"] for m in ("lp", "ap", "ft4", "lora", "dora")]
    assert 0 < saved[0] < saved[1] < saved[2] < saved[3] < saved[4]


def test_flops_match_the_hand_derived_formulas(result):
    expected = expected_flops()
    rows = {r["method"]: r for r in result["rows"]}
    for method in METHODS:
        train, infer = expected[method]
        assert rows[method]["train"]["flops"] == train, method
        assert rows[method]["infer"]["flops"] == infer, method
    assert rows["lp"]["cache"]["flops"] == expected["lp_cache"]
    for r in result["rows"]:  # the counted inference FLOPs agree with accounting.py's analytic ones
        assert r["infer"]["gflop_per_image"] == pytest.approx(r["infer"]["accounting_gflop_per_image"], rel=1e-12)


def test_json_records_the_run(result):
    assert result["dtype"] == "fp32" and result["batch"] == BATCH and result["config"] == "demo-tiny"
    assert result["command"].startswith("python -m replication bench --config demo-tiny")
    assert result["torch"] == torch.__version__ and result["device_type"] == "cpu" and result["date"]
    assert result["flop_convention"] == FLOP_CONVENTION and result["peak_bf16_tflops"] > 0
    dl = result["data_loading"]
    assert dl["images"] == 2 * BATCH and dl["images_per_s"] > 0 and set(dl["loader_over_train_rate"]) == set(
        METHODS) - {"lp"}


def test_unknown_method_is_rejected(capsys):
    with pytest.raises(SystemExit):
        cli(["--methods", "lora,qlora", "--device", "cpu"])
    assert "qlora" in capsys.readouterr().err


def test_saved_tensors_counts_what_autograd_keeps():
    """Hand-derived: Linear(8,16) keeps its input for the weight gradient, GELU its input, Linear(16,4) its
    input; the weights are parameters (not counted) and no gradient is asked of x, so W1 is not kept."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 4))
    x = torch.randn(5, 8)
    with SavedTensors(model) as saved:
        model(x).sum()
    assert saved.bytes == 4 * (5 * 8 + 5 * 16 + 5 * 16)


def test_saved_tensors_with_checkpointing_counts_each_trained_blocks_input():
    """Checkpointed blocks keep only their input; block 0, frozen and fed an input without gradient,
    builds no graph and is not checkpointed (pe.Transformer), so it keeps nothing."""
    from replication.lora import inject_adapters
    from replication.pe import Transformer

    B, N, W, L = 2, 5, 16, 3
    stack = Transformer(width=W, layers=L, heads=2, mlp_dim=32).train()
    for p in stack.parameters():
        p.requires_grad_(False)
    inject_adapters(stack, [f"resblocks.{i}.{t}" for i in range(1, L) for t in
                            ("attn.in_proj", "attn.out_proj", "mlp.c_fc", "mlp.c_proj")], "lora", rank=4, dropout=0.5)
    x = torch.randn(B, N, W)
    with SavedTensors(stack) as plain:
        stack(x)
    stack.grad_checkpointing = True
    with SavedTensors(stack) as checkpointed:
        stack(x)
    assert checkpointed.bytes == (L - 1) * B * N * W * 4  # blocks 1 and 2's fp32 inputs, nothing else
    assert plain.bytes > 5 * checkpointed.bytes


def test_project_activations_fits_a_line_through_two_batches(tmp_path, capsys):
    def result(batch, lora, dora):
        rows = [{"method": "lora", "train": {"saved_activation_gib": lora}},
                {"method": "dora", "train": {"saved_activation_gib": dora}}, {"method": "ap", "error": "out of memory"}]
        return {"config": "PE-Core-L14-336", "dtype": "bf16", "grad_checkpointing": False, "batch": batch,
                "device": "cpu", "command": f"bench --batch {batch}", "rows": rows, "peft": []}
    # lora: 0.5 GiB fixed + 0.25 GiB/image; dora: 0.5 + 0.375 GiB/image
    small, large = tmp_path / "b2.json", tmp_path / "b4.json"
    small.write_text(json.dumps(result(2, 1.0, 1.25)))
    large.write_text(json.dumps(result(4, 1.5, 2.0)))
    assert cli(["--project", str(large), str(small), "--batch", "128", "--out", str(tmp_path / "p.json")]) == 0
    rows = {r["method"]: r for r in json.loads((tmp_path / "p.json").read_text())["rows"]}
    assert set(rows) == {"lora", "dora"}
    assert rows["lora"]["saved_gib"] == pytest.approx(0.5 + 0.25 * 128)
    assert rows["dora"]["per_image_mib"] == pytest.approx(384) and rows["dora"]["fixed_gib"] == pytest.approx(0.5)
    assert "32.5 GiB" in capsys.readouterr().out
    with pytest.raises(ValueError, match="differ in batch only"):
        cli(["--project", str(small), str(small)])
