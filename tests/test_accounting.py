"""Parameter counts (L14 on the meta device) and analytic FLOPs (checked against FlopCounterMode)."""
import json

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from replication import accounting
from replication.accounting import (MATMUL_WEIGHTS, flops, heads_ops, method_counts, mtlora_ops, text_ops,
                                    vision_ops)
from replication.config import get_config
from replication.lora import merge_adapters
from replication.methods import build_method
from replication.pe import CLIP, VisionTransformer

ALL = ("age", "gender", "emotion")
IDS = ["table4.3/text_encoder", "table4.3/visual_encoder", "table4.3/total", "s3.3/lp_trainable",
       "s3.3/lp_total", "s3.4/ap_trainable", "s3.4/ap_total", "s3.5/ft4_trainable", "s3.5/ft4_total",
       "s3.6/dora_trainable", "s3.6/dora_total", "s3.6.1/mtlora_trainable", "s3.6.1/mtlora_total",
       "table4.3/gflops_zero_shot", "table4.14/gflops_ft4", "table4.14/gflops_dora_merged",
       "table4.14/gflops_mtlora"]


@pytest.fixture(scope="module")
def rows():
    return accounting.rows()


def test_rows_ids_and_parameter_figures(rows):
    assert [r["figure"] for r in rows] == IDS
    by_id = {r["figure"]: r for r in rows}
    for fid in IDS:
        if "gflops" in fid:
            continue
        assert by_id[fid]["replicated"] == by_id[fid]["thesis"], fid
    # Table 4.3's "visual encoder" is the single-task age model, counted by hand: tower + BatchNorm(1024)
    # + Linear(1024, 1024) + Linear(1024, 9) + one loss log-variance; the note names the tower alone
    visual = by_id["table4.3/visual_encoder"]
    assert visual["replicated"] == 317_151_232 + 2 * 1024 + (1024 * 1024 + 1024) + (1024 * 9 + 9) + 1
    assert "317,151,232" in visual["note"]
    assert round(by_id["table4.3/gflops_zero_shot"]["replicated"], 2) == 699.76
    assert all(r["note"] for r in rows)


def test_hand_counts():
    """A few figures recomputed by hand from the architecture (config.py, Meta's config)."""
    head = 1024 * 1024 + 1024 + 1024 * 9 + 9
    assert method_counts("lp", ("age",))[0] == head
    pool, block = 12_595_200, 12_596_224
    assert method_counts("ap", ("age",))[0] == pool + head + 2 * 1024
    assert method_counts("ft4", ("age",))[0] == 4 * block + pool + head + 2 * 1024
    r = 64
    per_block = r * (1024 + 3072) + r * 2048 + 2 * r * (1024 + 4096) + (3072 + 1024 + 4096 + 1024)
    per_pool = r * 2048 + 2 * r * (1024 + 4096) + (1024 + 4096 + 1024)
    vision = 317_151_232
    heads3 = 3 * (1024 * 1024 + 1024 + 2048) + 18 * 1025
    assert method_counts("dora", ALL) == (24 * per_block + per_pool + heads3 + 3,
                                          vision + 24 * per_block + per_pool + heads3 + 3)


def test_cli_json(capsys):
    assert accounting.cli(["--json", "--config", "demo-tiny"]) == 0
    table = json.loads(capsys.readouterr().out)
    assert [r["figure"] for r in table] == IDS
    assert all(set(r) == {"figure", "thesis", "replicated", "note"} for r in table)


def _counted(fn, *args):
    # SDPA's math backend runs attention as plain batched matmuls, which every torch release counts (older
    # ones have no formula for the CPU flash kernel)
    with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH):
        fn(*args)
    return counter.get_total_flops()


def test_analytic_matmul_flops_match_flop_counter_on_demo_tiny():
    cfg = get_config("demo-tiny")
    torch.manual_seed(0)
    clip = CLIP(cfg).eval()
    image = torch.randn(1, 3, 64, 64)
    assert flops(vision_ops(cfg.vision), MATMUL_WEIGHTS) == _counted(clip.visual, image)
    tokens = torch.randint(1, 1000, (18, cfg.text.context_length))
    assert flops(text_ops(cfg.text, 18), MATMUL_WEIGHTS) == _counted(clip.encode_text, tokens)

    ft4 = build_method("ft4", ALL, VisionTransformer(cfg.vision)).model.eval()
    expected = vision_ops(cfg.vision) + heads_ops(cfg.vision.output_dim, ALL)
    assert flops(expected, MATMUL_WEIGHTS) == _counted(ft4, image)

    dora = build_method("dora", ALL, VisionTransformer(cfg.vision), rank=4).model.eval()
    merge_adapters(dora)
    assert flops(expected, MATMUL_WEIGHTS) == _counted(dora, image)

    mt = build_method("mtlora", ALL, VisionTransformer(cfg.vision), rank=4).model.eval()
    merge_adapters(mt.encoder.vision)  # TA-DoRA merged; the task-specific LoRA cannot be
    assert flops(mtlora_ops(cfg.vision, ALL, rank=4), MATMUL_WEIGHTS) == _counted(mt, image)


def test_flop_convention_parts():
    cfg = get_config("PE-Core-L14-336").vision
    ops = vision_ops(cfg)
    n = 24 * 24 + 1
    assert ops["softmax"] == 24 * 16 * n * n + 8 * n
    assert ops["norm"] == (2 * 24 + 2) * n * 1024 + 1024  # ln_pre, 2 per block, ln_post, pooler's
    assert ops["attn_mac"] == 24 * 2 * n * n * 1024 + 2 * n * 1024


def test_inference_parameters_of_table_4_14():
    counts = accounting.inference_parameters()
    assert counts["zs"] == 671_137_793
    assert counts["ft4"] == counts["dora_merged"] == 317_151_232 + 3 * (1024 * 1024 + 1024 + 2048) + 18 * 1025
    # MTLoRA keeps its task-specific LoRA (3 tasks + shared pair, block 24 and pooling) and 3 probes
    ts = 2 * (4 * 64 * 2048 + 2 * 64 * 5120) * 4
    assert counts["mtlora"] == counts["ft4"] + ts + 2 * 1024
    assert int(counts["mtlora"] / 1e6) == 329 and int(counts["ft4"] / 1e6) == 320  # Table 4.14 (truncated M)


def test_flop_convention_norms_beyond_the_vision_tower():
    """The LayerNorm/BatchNorm elements FlopCounterMode does not see, by hand: text ln_1/ln_2 per block + ln_final
    per prompt; one BatchNorm per head; MTLoRA's block 24, ln_post and pooler once per task stream. Table 4.14's
    FT4 pipeline is the vision tower plus the three BN heads (Linear(1024, 1024), Linear(1024, C), C = 9 + 2 + 7)."""
    cfg = get_config("PE-Core-L14-336")
    t, v, n = cfg.text, cfg.vision, 24 * 24 + 1
    assert text_ops(t, 18)["norm"] == 18 * (2 * t.layers + 1) * t.context_length * t.width
    assert heads_ops(1024, ALL)["norm"] == 3 * 1024
    assert mtlora_ops(v, ALL)["norm"] == (1 + 2 * 23) * n * 1024 + 3 * (3 * n * 1024 + 1024) + 3 * 1024
    heads = 3 * 1024 + 3 * 2 * 1024 * 1024 + 2 * 1024 * 18
    assert accounting.gflops()["ft4"] * 1e9 == pytest.approx(flops(vision_ops(v)) + heads, abs=1)


def test_cli_table_says_which_figures_match(rows, capsys, monkeypatch):
    monkeypatch.setattr(accounting, "rows", lambda config: rows)
    assert accounting.cli([]) == 0
    table = {line.split()[0]: line.split()[1:] for line in capsys.readouterr().out.splitlines()
             if line.startswith(("s3.", "table4."))}
    assert table["s3.3/lp_trainable"] == ["1,058,825", "1,058,825", "yes"]
    ft4 = next(r for r in rows if r["figure"] == "table4.14/gflops_ft4")
    assert abs(ft4["replicated"] - ft4["thesis"]) > 0.1 and table["table4.14/gflops_ft4"][-1] == "no"
