"""`bench` on CPU: a smoke run of every method on demo-tiny, with its FLOP counts checked against formulas.

The expected FLOPs are derived here by hand from the architecture (replication/config.py) and the
methods as the thesis describes them (§3.3–3.6.1), not from replication code: 2 x multiply-accumulates of
every matmul, convolution and attention product, a training step charged 3x for the ops in the autograd
graph and 1x for those outside it (the bench's stated convention).
"""
import ast
import copy
import importlib.util
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

from replication.bench import FLOP_CONVENTION, SavedTensors, cli, format_table, plan_checkpointing, wall_clock
from replication.config import get_config
from replication.profiles import get_profile

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
    # DoRA: LoRA's products (dropout on the low-rank branch only, W0 once) + the weight norms, once per step.
    # Block 0's q|k|v product is in the graph: its bias b/(m/||V||) depends on m (lora.DoRALinear), so the
    # convention charges it 3x although its backward is only the bias's sum over tokens
    out["dora"] = (step(L * block + L * lora_block + pool - pool_q + lora_pool + proj + heads(d),
                        conv + pool_q, L * norm_block + norm_pool),
                   2 * B * (vision + heads(d)))
    # §3.6.1 MTLoRA: TA-DoRA blocks 0..L-2 (magnitudes frozen), block L and the pooling once per task with
    # TS-LoRA on q, k, v, out, c_fc, c_proj; probes trainable; heads on the width-d pooled vector, no proj
    T = len(CLASSES)
    ta = (L - 1) * (block + lora_block)
    ts_block = block + 3 * lora(w, w) + lora(w, w) + lora(w, mlp) + lora(mlp, w)
    ts_pool = pool + lora(w, w, 1) + 2 * lora(w, w) + lora_pool
    out["mtlora"] = (step(ta - N * qkv + T * (ts_block + ts_pool) + heads(w),
                          conv + N * qkv, (L - 1) * norm_block),  # frozen magnitudes: block 0's W0 off the graph
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


def test_table_prices_dora_against_lora_and_says_when_checkpointing_differs(result):
    rows = {r["method"]: r["train"] for r in result["rows"]}
    ratio = f"DoRA / LoRA step time: {rows['dora']['step_ms'] / rows['lora']['step_ms']:.2f}x"
    assert f"{ratio}\n" in format_table(result)
    # the full profile checkpoints DoRA's first 19 blocks and LoRA's 18: the ratio then also prices a replay
    uneven = copy.deepcopy(result)
    for r in uneven["rows"]:
        r["train"]["checkpointed_blocks"] = {"lora": 18, "dora": 19}.get(r["method"], 0)
    assert f"{ratio} (DoRA recomputes 19 blocks, LoRA 18: compare the adapters on a run with --checkpoint-blocks " \
           "off or all)" in format_table(uneven)


def test_json_records_the_run(result):
    assert result["dtype"] == "fp32" and result["batch"] == BATCH and result["config"] == "demo-tiny"
    assert result["command"].startswith("python3 -m replication bench --config demo-tiny")
    assert result["torch"] == torch.__version__ and result["device_type"] == "cpu" and result["date"]
    assert result["flop_convention"] == FLOP_CONVENTION and result["peak_bf16_tflops"] > 0
    assert result["checkpoint_blocks"] == "off" and not any(r["train"]["checkpointed_blocks"] for r in result["rows"])
    # the blocks that build a graph, by the methods' definitions: none (LP, AP), the last four (FT4, §3.5),
    # all (LoRA, DoRA), all but the task-specific last one MTLoRA rebuilds outside the stack (§3.6.1)
    L = get_config("demo-tiny").vision.layers
    assert {r["method"]: (r["train"]["blocks"], r["train"]["graph_blocks"]) for r in result["rows"]} == {
        "lp": (L, 0), "ap": (L, 0), "ft4": (L, 4), "lora": (L, L), "dora": (L, L), "mtlora": (L - 1, L - 1)}
    dl = result["data_loading"]
    assert dl["images"] == 2 * BATCH and dl["images_per_s"] > 0 and set(dl["loader_over_train_rate"]) == set(
        METHODS) - {"lp"}


def test_the_out_help_names_the_default_path_bench_writes(capsys, monkeypatch):
    """`--help` said bench-<device>-<date>.json while the default file is named to the second (result_path), as
    peft_compare's help and benchmarks/README.md say."""
    import re

    import replication.bench as bench
    monkeypatch.setenv("COLUMNS", "10000")  # one line per option
    with pytest.raises(SystemExit):
        cli(["--help"])
    assert "(default benchmarks/results/bench-<device>-<date-time>.json)" in capsys.readouterr().out
    path = bench.result_path("bench", torch.device("cpu"))
    assert path.parent == bench.RESULTS and re.fullmatch(r"bench-[a-z0-9-]+-\d{8}-\d{6}\.json", path.name), path


def test_unknown_method_is_rejected(capsys):
    with pytest.raises(SystemExit):
        cli(["--methods", "lora,qlora", "--device", "cpu"])
    assert "qlora" in capsys.readouterr().err


def test_no_gpu_and_no_device_stops_before_measuring(capsys, monkeypatch, tmp_path):
    # it used to fall back to the CPU: 10+ minutes of PE-Core-L14-336, filed in the tracked results folder
    import replication.bench as bench

    def measure(*args):
        raise AssertionError("bench started measuring")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(bench, "run", measure)
    monkeypatch.setattr(bench, "RESULTS", tmp_path)
    with pytest.raises(SystemExit) as exit_:
        cli(["--methods", "lp"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "no GPU" in err and "--device cpu --config demo-tiny" in err
    assert not any(tmp_path.iterdir())


def test_a_device_that_cannot_run_here_stops_before_measuring(capsys, monkeypatch):
    """The check `train` shares (distributed.device_problem): a name torch does not parse used to fail inside
    the first measurement with torch's traceback."""
    import replication.bench as bench

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(bench, "run", None)
    for device, message in (("gpu", "--device 'gpu' is not a torch device (e.g. cpu, cuda, cuda:1)"),
                            ("cuda", "--device cuda but CUDA is not available")):
        with pytest.raises(SystemExit) as exit_:
            cli(["--methods", "lp", "--device", device])
        assert exit_.value.code == 2
        assert capsys.readouterr().err.splitlines()[-1] == (f"python3 -m replication bench: error: {message}; pass "
                                                            f"--device cpu for a smoke test")


def test_saved_tensors_counts_what_autograd_keeps():
    """Hand-derived: Linear(8,16) keeps its input for the weight gradient, GELU its input, Linear(16,4) its
    input; the weights are parameters (not counted) and no gradient is asked of x, so W1 is not kept. A
    graph dropped inside the scope (the first call's) has freed what it saved: not counted."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 4))
    x = torch.randn(5, 8)
    with SavedTensors(model) as saved:
        model(torch.randn(7, 8)).sum()
        out = model(x).sum()
    assert saved.bytes == 4 * (5 * 8 + 5 * 16 + 5 * 16)
    del out


def test_saved_tensors_with_checkpointing_counts_each_trained_blocks_input():
    """Checkpointed blocks keep only their input; block 0, frozen and fed an input without gradient,
    builds no graph and is not checkpointed (pe.Transformer), so it keeps nothing and checkpointing only
    the first block changes nothing."""
    from replication.lora import inject_adapters
    from replication.pe import Transformer

    B, N, W, L = 2, 5, 16, 3
    stack = Transformer(width=W, layers=L, heads=2, mlp_dim=32).train()
    for p in stack.parameters():
        p.requires_grad_(False)
    inject_adapters(stack, [f"resblocks.{i}.{t}" for i in range(1, L) for t in
                            ("attn.in_proj", "attn.out_proj", "mlp.c_fc", "mlp.c_proj")], "lora", rank=4, dropout=0.5)
    x = torch.randn(B, N, W)
    saved = {}
    for first in (0, 1, 2, L):
        stack.checkpoint_blocks = first
        with SavedTensors(stack) as counted:
            out = stack(x)
        saved[first] = counted.bytes
        del out
    assert saved[L] == (L - 1) * B * N * W * 4  # blocks 1 and 2's fp32 inputs, nothing else
    assert saved[1] == saved[0] > saved[2] > saved[L] and saved[0] > 5 * saved[L]


def test_a_failed_method_is_a_row_and_the_exit_status_and_the_others_are_still_measured(tmp_path, monkeypatch,
                                                                                         capsys):
    import replication.bench as bench

    measure = bench.bench_method

    def failing(method, *args, **kwargs):
        if method == "dora":
            raise RuntimeError("kernel exploded\nsecond line")
        if method == "mtlora":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return measure(method, *args, **kwargs)

    monkeypatch.setattr(bench, "bench_method", failing)
    small = ["--device", "cpu", "--config", "demo-tiny", "--dtype", "fp32", "--batch", "2", "--steps", "1",
             "--warmup", "0"]
    out = tmp_path / "b.json"
    assert cli([*small, "--methods", "dora,mtlora,lp", "--out", str(out)]) == 1
    printed = capsys.readouterr()
    assert "[dora] failed: RuntimeError: kernel exploded\n" in printed.out
    assert "[mtlora] out of memory at batch 2: CUDA out of memory. Tried to allocate 2.00 GiB\n" in printed.out
    assert "Traceback" in printed.err and "RuntimeError: kernel exploded" in printed.err
    assert printed.err.endswith("bench: error: dora failed (traceback above); the other rows were measured\n")
    rows = json.loads(out.read_text())["rows"]
    assert rows[:2] == [{"method": "dora", "error": "failed: RuntimeError: kernel exploded"},
                        {"method": "mtlora", "error": "out of memory"}]
    assert rows[2]["method"] == "lp" and rows[2]["train"]["images_per_s"] > 0
    # out of memory is a result (the method does not fit), not a failure
    assert cli([*small, "--methods", "mtlora", "--out", str(out)]) == 0


def test_project_activations_fits_a_line_through_two_batches(tmp_path, capsys):
    def result(batch, lora, dora):
        blocks = {"blocks": 24, "graph_blocks": 24, "checkpointed_blocks": 0}
        rows = [{"method": "lora", "params": 9, "trainable_params": 1, "train": {"saved_activation_gib": lora, **blocks}},
                {"method": "dora", "params": 9, "trainable_params": 1, "train": {"saved_activation_gib": dora, **blocks}},
                {"method": "ap", "error": "out of memory"}]
        return {"config": "PE-Core-L14-336", "dtype": "bf16", "checkpoint_blocks": "off", "batch": batch,
                "device": "cpu", "command": f"bench --batch {batch}", "rows": rows}
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
    assert cli(["--project", str(small), str(small)]) == 2
    assert capsys.readouterr().err.startswith("bench: error: project_activations needs two results that differ in "
                                              "batch only")


def test_checkpoint_blocks_modes_and_what_recomputation_costs(tmp_path):
    """`--checkpoint-blocks` off / profile (the full profile's number per method, here more than demo-tiny's
    blocks: all) / a number, recorded per row. Each checkpointed block adds its replay to the executed ops, the
    same for every block; the 3x model-FLOP convention does not count recomputation. FT4 builds a graph in its
    last 4 of demo-tiny's 6 blocks only: the first 2 checkpoint none of them (the frozen blocks run without a
    graph), the first 3 one. The replays by hand (width 64, 65 tokens, MLP 256, rank 64): torch's checkpoint
    stops once it has what backward needs, so FT4 replays qkv, attention (QK^T and AV), out_proj and fc1 but
    not fc2, whose output nothing keeps; LoRA replays the block and its adapters but not fc2's B."""
    def run(mode):
        out = tmp_path / f"{mode}.json"
        assert cli(["--config", "demo-tiny", "--batch", "2", "--steps", "1", "--warmup", "0", "--dtype", "fp32",
                    "--device", "cpu", "--methods", "ap,ft4,lora", "--checkpoint-blocks", mode, "--out", str(out)]) == 0
        result = json.loads(out.read_text())
        assert result["checkpoint_blocks"] == mode
        return {r["method"]: r["train"] for r in result["rows"]}

    L = get_config("demo-tiny").vision.layers
    assert get_profile("full").checkpoint_blocks["lora"] >= L and "ap" not in get_profile("full").checkpoint_blocks
    off, profile, two = run("off"), run("profile"), run("2")
    assert [t["checkpointed_blocks"] for t in (off["ap"], off["lora"], profile["ap"], profile["lora"], two["lora"])] \
        == [0, 0, 0, L, 2]
    assert profile["ap"]["executed_gflop_per_image"] == off["ap"]["executed_gflop_per_image"]
    w, n, mlp, r = 64, 65, 256, RANK
    ft4_replay = 2 * n * w * 3 * w + 2 * (2 * n * n * w) + 2 * n * w * w + 2 * n * w * mlp
    lora_replay = ft4_replay + 2 * n * mlp * w + 2 * n * r * ((w + 3 * w) + (w + w) + (w + mlp) + mlp)
    block = (two["lora"]["executed_gflop_per_image"] - off["lora"]["executed_gflop_per_image"]) / 2
    assert block == pytest.approx(lora_replay / 1e9) and profile["lora"]["executed_gflop_per_image"] == pytest.approx(
        off["lora"]["executed_gflop_per_image"] + L * block, rel=1e-12)
    assert profile["lora"]["flops"] == off["lora"]["flops"] == two["lora"]["flops"]
    three = run("3")["ft4"]
    assert [t["ft4"]["graph_blocks"] for t in (off, two)] == [4, 4]
    assert [t["checkpointed_blocks"] for t in (off["ft4"], two["ft4"], three, profile["ft4"])] == [0, 0, 1, 0]
    assert two["ft4"]["executed_gflop_per_image"] == off["ft4"]["executed_gflop_per_image"]
    assert three["executed_gflop_per_image"] - off["ft4"]["executed_gflop_per_image"] == pytest.approx(ft4_replay / 1e9)
    with pytest.raises(SystemExit):
        cli(["--checkpoint-blocks", "some", "--device", "cpu"])


def test_checkpoint_blocks_beyond_the_model_are_refused_before_any_work(capsys):
    """A number above the model's blocks is a slip (`profile` may exceed them: all, as pe.Transformer reads it)."""
    with pytest.raises(SystemExit) as exit_:
        cli(["--config", "demo-tiny", "--device", "cpu", "--checkpoint-blocks", "7"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == ("python3 -m replication bench: error: --checkpoint-blocks 7: "
                                                        "demo-tiny has 6 blocks ('all' checkpoints them all)")


def _projection(mode, saved):
    """A `--project` output at batch 128: {method: (blocks, graph blocks, saved GiB)}; 1 GiB of fp32 weights
    (2**28 parameters), 0.75 GiB of gradient + AdamW moments (2**26 trainable parameters x 12 bytes)."""
    rows = [{"method": m, "params": 2**28, "trainable_params": 2**26, "blocks": b, "graph_blocks": g, "saved_gib": x,
             "checkpointed_blocks": 0 if mode in ("off", "0") else g} for m, (b, g, x) in saved.items()]
    return {"config": "PE-Core-L14-336", "dtype": "fp16", "batch": 128, "checkpoint_blocks": mode,
            "sources": [f"bench --checkpoint-blocks {mode}"], "rows": rows}


def test_plan_checkpointing_leaves_as_many_blocks_unchecked_as_the_card_holds(tmp_path, capsys):
    """Hand-computed: a 45 GiB card less 20 % headroom holds 36 GiB, 34.25 of them for activations after the
    1.75 GiB of weights and optimizer state. LoRA: 4 GiB with every block checkpointed, 86/24 more per block
    left out of it: floor(30.25 / (86/24)) = 8 blocks left, the first 16 checkpointed. MTLoRA (23 blocks in its
    stack): floor(16.25 / (82/23)) = 4 left, 19 checkpointed. FT4 fits without; LP has no block to checkpoint;
    DoRA here does not fit even with all 24 checkpointed. peft's rows are not a method of the profile. On a
    12 GiB card (9.6 usable, 6.85 for FT4's activations beyond its 1 GiB floor) FT4 keeps floor(6.85 / 2.25) = 3
    of its 4 graph blocks: `--checkpoint-blocks 21`, the first 20 frozen blocks (no graph) and one graph block."""
    off = _projection("off", {"lp": (24, 0, 0.01), "ft4": (24, 4, 10.0), "lora": (24, 24, 90.0),
                              "dora": (24, 24, 120.0), "mtlora": (23, 23, 100.0), "peft-lora": (24, 24, 95.0)})
    every = _projection("all", {"lp": (24, 0, 0.01), "ft4": (24, 4, 1.0), "lora": (24, 24, 4.0),
                                "dora": (24, 24, 40.0), "mtlora": (23, 23, 18.0), "peft-lora": (24, 24, 4.5)})
    paths = tmp_path / "off.json", tmp_path / "all.json"
    for path, projection in zip(paths, (off, every)):
        path.write_text(json.dumps(projection))
    assert cli(["--plan-checkpointing", *map(str, paths), "--memory-gib", "45", "--out", str(tmp_path / "plan.json")]) == 0
    plan = json.loads((tmp_path / "plan.json").read_text())
    rows = {r["method"]: r for r in plan["rows"]}
    assert plan["usable_gib"] == pytest.approx(36.0) and plan["headroom"] == 0.2
    assert {m: (r["checkpoint_blocks"], r["checkpointed_blocks"], r["fits"]) for m, r in rows.items()} == {
        "lp": (0, 0, True), "ft4": (0, 0, True), "lora": (16, 16, True), "dora": (24, 24, False),
        "mtlora": (19, 19, True)}
    assert rows["lora"]["saved_gib"] == pytest.approx(4 + 8 * 86 / 24)
    exact = _projection("off", {"lp": (24, 0, 34.25)})  # 1.75 + 34.25 = 36 GiB: exactly the usable memory fits
    assert plan_checkpointing(exact, _projection("all", {"lp": (24, 0, 34.25)}), 45, 0.2)["rows"][0]["fits"]
    assert rows["lora"]["planned_gib"] == pytest.approx(1.75 + 4 + 8 * 86 / 24)
    assert rows["mtlora"]["per_block_gib"] == pytest.approx(82 / 23) and rows["ft4"]["saved_gib"] == 10.0
    assert "| lora | 16 | 16 / 24 |" in capsys.readouterr().out
    small = {r["method"]: r for r in plan_checkpointing(off, every, memory_gib=12, headroom=0.2)["rows"]}
    assert (small["ft4"]["checkpoint_blocks"], small["ft4"]["checkpointed_blocks"], small["ft4"]["fits"]) == (21, 1, True)
    # `0` and the number of blocks are `off` and `all`; the projections are told apart by their rows
    renamed = plan_checkpointing(_projection("0", {m: (r["blocks"], r["graph_blocks"], r["saved_gib"]) for m, r in
                                                   ((r["method"], r) for r in off["rows"])}), every, 45, 0.2)
    assert renamed["rows"] == plan["rows"]
    assert cli(["--plan-checkpointing", str(paths[1]), str(paths[0])]) == 2
    assert "the first without checkpointing and the second with every block" in capsys.readouterr().err
    worse = _projection("all", {"lora": (24, 24, 95.0)})  # more kept with checkpointing than without
    with pytest.raises(ValueError, match="lora: checkpointing all 24 graph blocks keeps 95.00 GiB"):
        plan_checkpointing(off, worse, 45, 0.2)
    older = copy.deepcopy(off)  # a projection written before the block counts existed
    del older["rows"][2]["checkpointed_blocks"]
    with pytest.raises(ValueError, match="bench --checkpoint-blocks off: no checkpointed_blocks for lora: written by "
                                         "an older bench"):
        plan_checkpointing(older, every, 45, 0.2)


def test_full_profile_checkpoints_what_the_committed_cpu_counts_plan():
    """The full profile's `checkpoint_blocks` are `bench --plan-checkpointing` on the L14-336 activation counts in
    benchmarks/results/cpu-counts (the thesis's 48 GB card, default headroom), and the committed plan is that."""
    from replication.bench import L40S_BYTES
    counts = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "cpu-counts"
    off, every = (json.loads((counts / f"activations-batch128{s}.json").read_text()) for s in ("", "-all-blocks"))
    plan = plan_checkpointing(off, every, memory_gib=L40S_BYTES / 2**30, headroom=0.2)
    assert plan == json.loads((counts / "checkpointing-plan-l40s.json").read_text())
    assert all(r["fits"] for r in plan["rows"])
    assert {r["method"]: r["checkpoint_blocks"] for r in plan["rows"] if r["checkpoint_blocks"]} == \
        get_profile("full").checkpoint_blocks


def test_wall_clock_sums_every_thesis_run_at_the_measured_rates(capsys, tmp_path):
    """Hand-computed oracle from Table 3.2a (gender 168,362, age 136,747, emotion 9,215 training images; a
    multi-task epoch draws 242,082 after emotion replication) and §3.1's 80-20 split (val = train / 4)."""
    trained = get_profile("full").checkpoint_blocks  # L14-336: 24 blocks, all building a graph for LoRA/DoRA

    def rates(train, infer, checkpointed=0):
        return {"train": {"images_per_s": train, "gflop_per_image": 1000.0, "blocks": 24, "graph_blocks": 24,
                          "checkpointed_blocks": checkpointed},
                "infer": {"images_per_s": infer, "gflop_per_image": 400.0}}
    rows = [{"method": "lp", "train_input": "cached features", **rates(1e4, 1e4),
             "cache": {"images_per_s": 500.0, "gflop_per_image": 400.0}},
            {"method": "ap", **rates(400.0, 800.0)}, {"method": "ft4", **rates(300.0, 800.0)},
            {"method": "lora", **rates(100.0, 800.0, trained["lora"])},
            {"method": "dora", **rates(90.0, 800.0, trained["dora"])},
            {"method": "mtlora", "error": "out of memory"}]
    result = {"device": "GPU X", "command": "bench", "date": "today", "config": "PE-Core-L14-336",
              "dtype": "fp16", "batch": 128, "rows": rows}
    path = tmp_path / "r.json"
    path.write_text(json.dumps(result))
    assert cli(["--wall-clock", str(path), "--epochs", "1", "10", "--out", str(tmp_path / "w.json")]) == 0
    estimate = json.loads((tmp_path / "w.json").read_text())

    single = {"age": 136747, "gender": 168362, "emotion": 9215}
    multi_draws, multi_val = 242082, 168362 / 4
    # LP on augmented images (§3.1): the frozen encoder (caching-pass rate) over the draws and the validation
    # images every epoch, and the heads' step over the draws
    lp_epoch = sum(n / 500 + n / 1e4 + n / 4 / 500 for n in single.values())
    single_epoch = {m: sum(n / r + n / 4 / 800 for n in single.values()) for m, r in
                    (("ap", 400), ("ft4", 300), ("dora", 90))}
    multi_epoch = {m: multi_draws / r + multi_val / 800 for m, r in (("ap", 400), ("ft4", 300), ("lora", 100),
                                                                    ("dora", 90))}
    per_epoch = lp_epoch + sum(single_epoch.values()) + sum(multi_epoch.values()) + multi_epoch["ft4"]  # + ema
    for e in (1, 10):
        assert estimate["total_hours"][str(e)] == pytest.approx(e * per_epoch / 3600, rel=1e-4)
    assert len(estimate["runs"]) == 17  # 19 runs less MTLoRA's two
    images = sum(single.values())  # each single-task method's three runs together
    gflop = ((400 + 1000) * images + 400 * images / 4                  # LP: encoder + heads, encoder on val
             + 3 * (1000 * images + 400 * images / 4)                   # AP, FT4, DoRA single-task
             + 5 * (1000 * multi_draws + 400 * multi_val))              # the five measured multi-task runs
    assert estimate["epoch_pflop"] == pytest.approx(gflop / 1e6, rel=1e-6)  # val: whole images
    assert estimate["notes"] == ["not measured, so left out: mtlora (out of memory)"]
    rows[4]["train"]["checkpointed_blocks"] = 0  # DoRA measured otherwise than the full profile trains it
    assert f"dora measured with 0 checkpointed blocks; the full profile trains it with {trained['dora']}" in \
        wall_clock(result, (1,))["notes"]
    result["dtype"] = "bf16"
    assert "measured in bf16; the full profile trains in fp16" in wall_clock(result, (1,))["notes"]
    out = capsys.readouterr().out
    assert f"| dora age-gender-emotion uw | {trained['dora']}/24 | 242,082 | 42,090 |" in out and "17 training runs" in out
    del rows[4]["train"]["checkpointed_blocks"]  # a result written before the block counts existed
    with pytest.raises(ValueError, match="no checkpointed_blocks for dora: written by an older bench"):
        wall_clock(result, (1,))


RESULT = ("the JSON a GPU `bench` run writes (e.g. benchmarks/results/<date>-<gpu>/profile.json), not the output of "
          "--project, --plan-checkpointing or --wall-clock")
PROJECTION = "the JSON `bench --project SMALL.json LARGE.json --out FILE` writes"


@pytest.mark.parametrize("option, content, says", [
    ("--wall-clock", {"config": "PE-Core-L14-336", "dtype": "fp16", "batch": 128, "memory_gib": 44.99, "rows": []},
     "no command, date, device"),  # a plan
    ("--wall-clock", {"runs": [], "total_hours": {}},  # an estimate
     "no command, date, device, config, dtype, batch, rows"),
    ("--wall-clock", [1, 2], "no command, date, device, config, dtype, batch, rows"),
    ("--wall-clock", "not json", "not JSON (Expecting value: line 1 column 1 (char 0))"),
    ("--wall-clock", None, "no such file"),
    ("--wall-clock", "", "the file is empty"),
    ("--wall-clock", "folder", "a folder"),
    ("--project", _projection("off", {}), "no command, device"),  # a projection for a measuring run's result
    ("--project", None, "no such file"),
    ("--project", "folder", "a folder"),
    ("--plan-checkpointing", {"config": "PE-Core-L14-336", "dtype": "fp16", "batch": 128, "checkpoint_blocks": "off",
                              "command": "bench", "rows": []}, "no sources"),  # a result for a projection
    ("--plan-checkpointing", "", "the file is empty"),
    ("--plan-checkpointing", "{", "not JSON (Expecting property name enclosed in double quotes: line 1 column 2 "
                                  "(char 1))"),
])
def test_an_input_file_that_is_not_what_the_option_reads_is_named_in_one_line(tmp_path, capsys, option, content, says):
    # they used to end in tracebacks: FileNotFoundError, IsADirectoryError, JSONDecodeError, KeyError 'rows'/'config'/
    # 'sources', and even read_bench_result's own ValueError
    path = tmp_path / "other.json"
    if content == "folder":
        path.mkdir()
    elif content is not None:
        path.write_text(content if isinstance(content, str) else json.dumps(content))
    files = [str(path)] * (1 if option == "--wall-clock" else 2)
    assert cli([option, *files]) == 2
    expected = RESULT if option != "--plan-checkpointing" else PROJECTION
    assert capsys.readouterr().err == f"bench: error: {path}: {says}; expected {expected}\n"


def test_epochs_below_one_are_refused(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli(["--wall-clock", "r.json", "--epochs", "10", "0"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.endswith("error: argument --epochs: expected a whole number >= 1, got '0'\n")


def test_an_out_that_cannot_be_written_is_said_before_measuring(tmp_path, capsys, monkeypatch):
    """It failed with a traceback after the measurements (their results lost), or after --wall-clock's table."""
    import replication.bench as bench

    monkeypatch.setattr(bench, "run", lambda *args: pytest.fail("bench measured with an --out it cannot write"))
    (tmp_path / "afile").write_text("")
    out = tmp_path / "afile" / "bench.json"
    assert cli(["--device", "cpu", "--config", "demo-tiny", "--out", str(out)]) == 2
    assert capsys.readouterr().err == f"bench: error: {out}: {tmp_path / 'afile'} is a file, not a folder\n"
    assert cli(["--wall-clock", "r.json", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr() == ("", f"bench: error: {tmp_path} is a folder; expected a file\n")


GPU_SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu.sh"
# requirements.txt's packages that the GPU machines' image lacks (its package list, read 2026-11-17): the
# script must run without them
IMAGE_LACKS = ("ftfy", "papermill", "ipykernel", "jupyterlab")


def packed(out: Path) -> list[str]:
    """The members of gpu.sh's one archive in `out` (the device tool brings back 8 files at most)."""
    assert [p.name for p in out.iterdir()] == ["results.tar.gz"]
    with tarfile.open(out / "results.tar.gz") as tar:
        return sorted(m.name for m in tar.getmembers() if m.isfile())


def test_gpu_script_runs_its_steps_and_packs_the_results_into_out(tmp_path):
    """benchmarks/gpu.sh (what a GPU session runs) on demo-tiny and the CPU, through BENCH_ARGS and PEFT_ARGS,
    without the packages the GPU image lacks (a sitecustomize makes importing them fail)."""
    pytest.importorskip("peft")  # no-checkpointing and peft run benchmarks/peft_compare.py
    results, out, site = tmp_path / "results", tmp_path / "out", tmp_path / "site"
    out.mkdir()
    site.mkdir()
    (site / "sitecustomize.py").write_text(f"import sys\nsys.modules.update(dict.fromkeys({IMAGE_LACKS!r}))\n")
    small = ("--config demo-tiny --device cpu --dtype fp32 --batch 2 --methods lp,dora "
             "--workers 0 --loader-images 4 --loader-batches 2")
    compare = "--config demo-tiny --device cpu --dtype fp32 --batch 2 --steps 1 --warmup 0"
    env = {**os.environ, "PYTHON": sys.executable, "RESULTS": str(results), "OUT": str(out), "BENCH_ARGS": small,
           "PEFT_ARGS": compare, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(site), *filter(None, [os.environ.get("PYTHONPATH")])])}
    blocked = subprocess.run([sys.executable, "-c", "import ftfy"], env=env, capture_output=True, text=True)
    assert "ModuleNotFoundError: import of ftfy halted" in blocked.stderr  # the stand-in image works
    subprocess.run(["bash", str(GPU_SCRIPT), "profile all-blocks", "no-checkpointing peft wall-clock"], env=env,
                   check=True, capture_output=True, text=True)
    assert packed(out) == sorted(f"results/{name}" for name in [
        "profile.json", "profile.log", "all-blocks.json", "all-blocks.log", "no-checkpointing-batch32.json",
        "no-checkpointing-batch32.log", "peft-profile.json", "peft-profile.log", "wall-clock.json", "wall-clock.md"])
    profile = json.loads((results / "profile.json").read_text())
    assert profile["checkpoint_blocks"] == "profile" and profile["data_loading"]["images_per_s"] > 0
    assert (profile["steps"], profile["warmup"]) == (10, 3)  # the script's TIMING, a lease's worth
    assert json.loads((results / "peft-profile.json").read_text())["steps"] == 1  # PEFT_ARGS comes after TIMING
    L = get_config("demo-tiny").vision.layers  # the full profile's numbers exceed demo-tiny's blocks: all
    assert [r["train"]["checkpointed_blocks"] for r in profile["rows"]] == [0, L]
    for name, checkpointed in (("no-checkpointing-batch32", 0), ("peft-profile", L)):  # ours and peft's alike
        rows = json.loads((results / f"{name}.json").read_text())["rows"]
        assert [(r["method"], r["train"]["checkpointed_blocks"]) for r in rows] == [
            (m, checkpointed) for m in ("lora", "peft-lora", "dora", "peft-dora")], name
    every = json.loads((results / "all-blocks.json").read_text())
    assert [r["train"]["checkpointed_blocks"] for r in every["rows"]] == [0, L]
    estimate = json.loads((results / "wall-clock.json").read_text())
    assert [r["method"] for r in estimate["runs"]] == ["lp"] * 3 + ["dora"] * 4
    assert "not measured, so left out: ap, ft4, lora, mtlora" in estimate["notes"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without a GPU")
def test_gpu_script_without_a_gpu_says_so_before_any_work():
    results = sorted((GPU_SCRIPT.parents[0] / "results").iterdir())
    done = subprocess.run(["bash", str(GPU_SCRIPT)], env={**os.environ, "PYTHON": sys.executable, "RESULTS": ""},
                          capture_output=True, text=True)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr == ('gpu.sh: no GPU (CUDA is not available); on the CPU, name the folder and the device: '
                           'RESULTS=DIR BENCH_ARGS="--device cpu ..." PEFT_ARGS="--device cpu ..."\n')
    assert sorted((GPU_SCRIPT.parents[0] / "results").iterdir()) == results  # no folder made


def stand_in_python(tmp_path: Path, script: str) -> Path:
    """An executable that gpu.sh runs as PYTHON instead of the interpreter."""
    python = tmp_path / "python"
    python.write_text("#!/bin/sh\n" + script)
    python.chmod(0o755)
    return python


def test_gpu_script_goes_on_after_a_failed_step_and_names_it_at_the_end(tmp_path):
    results, out = tmp_path / "results", tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "PYTHON": str(stand_in_python(tmp_path, 'echo "broken: $*"\nexit 3\n')),
           "RESULTS": str(results), "OUT": str(out)}
    done = subprocess.run(["bash", str(GPU_SCRIPT), "profile", "peft wall-clock"], env=env, capture_output=True,
                          text=True)
    assert done.returncode == 1
    assert [line.split(" -> ")[0] for line in done.stdout.splitlines() if line.startswith("==")] == [
        "== profile", "== peft", "== wall-clock"]
    assert done.stderr == f"gpu.sh: failed steps: profile peft wall-clock (their output is in {results})\n"
    assert packed(out) == ["results/peft-profile.log", "results/profile.log", "results/wall-clock.md"]
    assert (results / "profile.log").read_text().startswith("broken: -m replication bench --steps 10 --warmup 3 ")


def test_gpu_script_refuses_an_unknown_step_before_any_work(tmp_path):
    env = {**os.environ, "PYTHON": str(stand_in_python(tmp_path, "exit 0\n")), "RESULTS": str(tmp_path / "r")}
    done = subprocess.run(["bash", str(GPU_SCRIPT), "profile", "peft profil"], env=env, capture_output=True, text=True)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == ("gpu.sh: unknown step 'profil'; the steps: profile peft all-blocks wall-clock cuda-tests "
                           "no-checkpointing compile\n")
    assert not (tmp_path / "r").exists()


def test_gpu_script_stopped_mid_step_packs_what_the_step_wrote(tmp_path):
    """A device command cut short by `timeout` (TERM to the script's process group) still brings back the
    folder: here a stand-in interpreter writes its JSON, then hangs."""
    results, out = tmp_path / "results", tmp_path / "out"
    out.mkdir()
    python = stand_in_python(tmp_path, 'echo "{}" > "$RESULTS/profile.json"\nexec sleep 60\n')
    env = {**os.environ, "PYTHON": str(python), "RESULTS": str(results), "OUT": str(out)}
    done = subprocess.run(["timeout", "3", "bash", str(GPU_SCRIPT), "profile", "peft"], env=env, capture_output=True,
                          text=True)
    assert done.returncode == 124 and "== peft" not in done.stdout
    assert packed(out) == ["results/profile.json", "results/profile.log"]  # the JSON and its tee'd log


def test_compiled_dora_training_step_matches_eager():
    """`bench --compile` times torch.compile(engine.Objective): it must compute what the eager step computes.
    DoRA is checked (the most hand-written code: detached weight norm, fused rescale); dropout is off, since
    compiled dropout draws other masks."""
    from replication import engine
    from replication.losses import make_weighting
    from replication.methods import build_method
    from replication.pe import VisionTransformer

    g = torch.Generator().manual_seed(1)
    images = torch.randn(4, 3, 64, 64, generator=g)
    targets = torch.stack([torch.randint(0, c, (4,), generator=g) for c in CLASSES.values()], 1)
    results = []
    for compiled in (False, True):
        torch.manual_seed(0)
        adapted = build_method("dora", tuple(CLASSES), VisionTransformer(get_config("demo-tiny").vision), rank=4,
                               lora_dropout=0.0, head_dropout=0.0)
        objective = engine.Objective(adapted.model.train(), make_weighting("uw", tuple(CLASSES)), cached=False)
        loss, _ = (torch.compile(objective) if compiled else objective)(images, targets)
        loss.backward()
        results.append((loss.item(), {n: p.grad for n, p in objective.named_parameters() if p.grad is not None}))
    (eager_loss, eager), (compiled_loss, compiled) = results
    assert compiled_loss == pytest.approx(eager_loss, rel=1e-6)
    # 27 DoRA layers (4 per block x 6, 3 in the pooling) x (A, B, m) + heads and BatchNorm (18) + the s_k
    assert eager.keys() == compiled.keys() and len(eager) == 100
    for name, grad in eager.items():  # fp32, other summation orders: within 1e-5 of each gradient's scale
        assert (compiled[name] - grad).abs().max() <= 1e-5 * grad.abs().max(), name  # (A's are 0: B starts at 0)


def test_peft_compare_times_ours_and_peft_on_the_same_modules(tmp_path, capsys, monkeypatch):
    """benchmarks/peft_compare.py (imported from its path: a script beside the library) on demo-tiny and the
    CPU. peft's adapters sit on our 27 adapted modules with our rank: the same parameter counts, and for LoRA
    the hand-derived LoRA count. peft's DoRA (DoraLinearLayer.forward, peft 0.21) runs W0 a second time on the
    dropped-out input (3x in the graph; block 0's q|k|v, whose input needs no grad, 1x) and forms each B A by
    running A and B on an identity matrix, in the graph, once per step."""
    peft = pytest.importorskip("peft")
    spec = importlib.util.spec_from_file_location(
        "peft_compare", Path(__file__).resolve().parents[1] / "benchmarks" / "peft_compare.py")
    compare = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(compare)
    out = tmp_path / "peft.json"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two shared cores: see `result`
    try:
        assert compare.main(["--config", "demo-tiny", "--batch", "2", "--steps", "1", "--warmup", "0",
                             "--dtype", "fp32", "--device", "cpu", "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    printed, result = capsys.readouterr().out, json.loads(out.read_text())
    assert result["command"] == ("python3 benchmarks/peft_compare.py --config demo-tiny --batch 2 --steps 1 --warmup 0 "
                                 f"--dtype fp32 --device cpu --out {out}")
    assert result["peft"] == peft.__version__ and result["torch"] == torch.__version__ and result["date"]
    assert result["dtype"] == "fp32" and result["batch"] == 2 and result["device_type"] == "cpu"
    rows = {r["method"]: r for r in result["rows"]}
    assert list(rows) == ["lora", "peft-lora", "dora", "peft-dora"]
    assert not any("infer" in r for r in rows.values())  # training steps only: `bench` times merged inference
    for m in ("lora", "dora"):
        ours, theirs = rows[m], rows[f"peft-{m}"]
        assert theirs["target_modules"] == 27
        assert (theirs["params"], theirs["trainable_params"]) == (ours["params"], ours["trainable_params"])
        ratio = ours["train"]["images_per_s"] / theirs["train"]["images_per_s"]
        assert result["ours_over_peft_speed"][m] == ratio
        assert f"| {m} | {ours['train']['images_per_s']:.1f} | {theirs['train']['images_per_s']:.1f} | {ratio:.2f}x |" \
            in printed
    v = get_config("demo-tiny").vision
    w, mlp, N, B = v.width, v.mlp_dim, v.grid**2 + 1, 2
    lora_flops = expected_flops(B=B)["lora"][0]
    assert rows["peft-lora"]["train"]["flops"] == rows["lora"]["train"]["flops"] == lora_flops
    # (in, out, tokens) of the adapted linears: q|k|v, out, c_fc, c_proj per block; the pooling's out and MLP
    layers = [(w, 3 * w, N), (w, w, N), (w, mlp, N), (mlp, w, N)] * v.layers + [(w, w, 1), (w, 4 * w, 1), (4 * w, w, 1)]
    assert len(layers) == 27
    w0, qkv0 = sum(n * i * o for i, o, n in layers), N * w * 3 * w
    products = sum(i * i * RANK + i * RANK * o for i, o, _ in layers)
    assert rows["peft-dora"]["train"]["flops"] == lora_flops + 2 * B * (3 * (w0 - qkv0) + qkv0) + 3 * 2 * products
    # an --out that cannot be written is refused in one line before anything is measured
    (tmp_path / "afile").write_text("")
    bad = tmp_path / "afile" / "peft.json"
    assert compare.main(["--config", "demo-tiny", "--device", "cpu", "--out", str(bad)]) == 2
    assert capsys.readouterr().err == f"peft_compare: error: {bad}: {tmp_path / 'afile'} is a file, not a folder\n"
    # peft failing (another peft release, say) leaves our rows measured and the exit status 1
    monkeypatch.setattr(compare, "bench_peft", lambda *args: 1 / 0)
    assert compare.main(["--config", "demo-tiny", "--batch", "2", "--steps", "1", "--warmup", "0", "--dtype", "fp32",
                         "--device", "cpu", "--out", str(out)]) == 1
    assert capsys.readouterr().err.endswith("peft_compare: error: peft-lora, peft-dora failed (traceback above); the "
                                            "other rows were measured\n")
    assert [r.get("error") for r in json.loads(out.read_text())["rows"]] == [
        None, "failed: ZeroDivisionError: division by zero", None, "failed: ZeroDivisionError: division by zero"]


def test_bench_has_no_peft_option_and_the_library_imports_none_of_peft_timm_open_clip(capsys):
    """peft, timm and open_clip serve only as reference oracles in tests and benchmarks/ (the project's rule)."""
    with pytest.raises(SystemExit) as stop:  # refused at parsing, before any measurement
        cli(["--peft", "--device", "cpu"])
    assert stop.value.code == 2 and "unrecognized arguments: --peft" in capsys.readouterr().err
    library = Path(__file__).resolve().parents[1] / "replication"
    imported = set()
    for path in library.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {(path.name, a.name.split(".")[0]) for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported.add((path.name, node.module.split(".")[0]))
    assert not {(f, m) for f, m in imported if m in ("peft", "timm", "open_clip")}


def test_rates_epoch_minutes_and_table_cells_follow_from_the_counts(result, monkeypatch):
    """TFLOP/s = FLOPs / median step seconds, the % of peak is that over the bf16 matmul peak measured in the same
    run (2 n^3 FLOPs per n x n matmul), and the table prints both. An epoch is Table 3.2a's 242,082 multi-task
    draws (emotion replicated to a third, §3.7.2) at the step rate, LP's plus its encoder pass. The executed
    count holds the whole forward (frozen prefix included) plus backward: LP's by hand, heads Linear(d,d) ->
    Linear(d,C) on cached features (no input gradient for the first)."""
    import replication.bench as bench
    assert bench.thesis_epoch_images() == 242082
    rows = {r["method"]: r for r in result["rows"]}
    peak, table = result["peak_bf16_tflops"], format_table(result).splitlines()
    for method, r in rows.items():
        t = r["train"]
        assert t["tflops"] == pytest.approx(t["flops"] / (t["step_ms"] / 1e3) / 1e12, rel=1e-9)
        assert t["frac_of_peak"] == pytest.approx(t["tflops"] / peak, rel=1e-9)
        encoder = 1 / r["cache"]["images_per_s"] if method == "lp" else 0
        assert t["epoch_minutes"] == pytest.approx(242082 * (1 / t["images_per_s"] + encoder) / 60, rel=1e-9)
        [line] = [line for line in table if line.startswith(f"| {method} ")]
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[7] == f"{100 * t['frac_of_peak']:.1f}" and cells[6] == f"{t['tflops']:.2f}"
    expected = expected_flops()
    for method in ("ap", "ft4", "lora"):  # executed: at least the whole forward, not its graph part only
        assert rows[method]["train"]["executed_gflop_per_image"] * BATCH * 1e9 > expected[method][1]
    d = get_config("demo-tiny").vision.output_dim
    heads = sum(d * d + d * c for c in CLASSES.values())
    assert rows["lp"]["train"]["executed_gflop_per_image"] * 1e9 == \
        2 * (heads + sum(d * d + 2 * d * c for c in CLASSES.values()))
    monkeypatch.setattr(bench, "time_calls", lambda fn, device, steps, warmup: [0.5])
    assert bench.matmul_peak_tflops(torch.device("cpu")) == 2 * 256**3 / 0.5 / 1e12


def test_saved_tensors_counts_a_shared_storage_once_at_its_dtypes_size():
    """Two saved views of one (5, 16) activation are one storage; in bf16 it takes 2 bytes an element."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(8, 16).to(torch.bfloat16)
    w1, w2 = (torch.nn.Parameter(torch.randn(n, dtype=torch.bfloat16)) for n in (4, 12))
    model = torch.nn.ParameterList([*layer.parameters(), w1, w2])
    with SavedTensors(model) as saved:
        h = layer(torch.randn(5, 8, dtype=torch.bfloat16)).detach().requires_grad_()
        out = (h[:, :4] * w1).sum() + (h[:, 4:] * w2).sum()
    assert saved.bytes == 2 * 5 * 16
    del out


@pytest.mark.parametrize("option, value, expected", [
    ("--steps", "0", "a whole number >= 1"), ("--warmup", "-1", "a whole number >= 0"),
    ("--batch", "1", "a whole number >= 2"), ("--loader-batches", "-2", "a whole number >= 0"),
    ("--memory-gib", "0", "a number > 0"), ("--headroom", "1.5", "a number >= 0 and <= 1"),
    ("--headroom", "nan", "a number >= 0 and <= 1")])
def test_numbers_out_of_range_are_refused_naming_the_option_and_value(capsys, monkeypatch, option, value, expected):
    """Each option says what it takes: --steps/--warmup/--batch shared one message that named none of the values,
    and --memory-gib, --headroom (a plan with a negative usable memory) and --loader-batches took any number."""
    import replication.bench as bench

    monkeypatch.setattr(bench, "run", lambda *args: pytest.fail(f"bench measured with {option} {value}"))
    with pytest.raises(SystemExit) as exit_:
        cli(["--device", "cpu", "--config", "demo-tiny", option, value])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.endswith(f"error: argument {option}: expected {expected}, got '{value}'\n")
