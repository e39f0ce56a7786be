"""Checkpoint loading: Meta's, timm's and open_clip's key layouts round-trip to identical outputs; bad files fail
loudly. (tests/test_reference_models.py loads timm's and open_clip's own models, where they are installed.)"""
import random
import sys
from pathlib import Path

import pytest
import torch

from replication.checkpoint import (CheckpointError, check_readable, load_clip, load_vision, read_state_dict,
                                    save_clip_meta_layout)
from replication.config import CLIPConfig, TextConfig, VisionConfig, get_config
from replication.pe import CLIP, VisionTransformer
from replication.profiles import get_profile
from replication.reproduce import missing_full_inputs

CFG = CLIPConfig(
    "ckpt-test",
    VisionConfig(image_size=16, patch_size=8, width=32, layers=2, heads=2, mlp_dim=48, output_dim=16, pool_heads=4),
    TextConfig(width=16, layers=1, heads=2, mlp_dim=32, output_dim=16, context_length=6, vocab_size=20),
)
IMG = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
TOKENS = torch.tensor([[18, 4, 5, 19, 0, 0], [18, 7, 19, 0, 0, 0]])


@pytest.fixture
def model():
    torch.manual_seed(0)
    return CLIP(CFG).eval()


def meta_state_dict(model):
    """Meta's layout written out by hand: fused block q|k|v as raw in_proj_weight / in_proj_bias."""
    out = {}
    for k, v in model.state_dict().items():
        if ".resblocks." in k and ".attn.in_proj." in k:
            k = k.replace(".attn.in_proj.weight", ".attn.in_proj_weight").replace(".attn.in_proj.bias", ".attn.in_proj_bias")
        out[k] = v.clone()
    return out


def timm_state_dict(meta_sd):
    """timm's vit_pe_core_* layout from Meta's vision keys (timm's eva.py), written independently of the loader."""
    vis = {k[len("visual."):]: v for k, v in meta_sd.items() if k.startswith("visual.")}
    out = {"cls_token": vis.pop("class_embedding")[None, None], "pos_embed": vis.pop("positional_embedding")[None],
           "patch_embed.proj.weight": vis.pop("conv1.weight")}
    proj = vis.pop("proj")
    out["head.weight"], out["head.bias"] = proj.T.contiguous(), torch.zeros(proj.shape[1])
    w, b = vis.pop("attn_pool.attn.in_proj_weight"), vis.pop("attn_pool.attn.in_proj_bias")
    c = w.shape[1]
    out |= {"attn_pool.q.weight": w[:c], "attn_pool.kv.weight": w[c:], "attn_pool.q.bias": b[:c],
            "attn_pool.kv.bias": b[c:], "attn_pool.latent": vis.pop("attn_pool.probe")}
    names = {"ln_pre": "norm_pre", "ln_post": "norm", "attn_pool.attn.out_proj": "attn_pool.proj",
             "attn_pool.layernorm": "attn_pool.norm", "attn_pool.mlp.c_fc": "attn_pool.mlp.fc1",
             "attn_pool.mlp.c_proj": "attn_pool.mlp.fc2", "ln_1": "norm1", "ln_2": "norm2",
             "attn.in_proj_": "attn.qkv.", "attn.out_proj": "attn.proj", "mlp.c_fc": "mlp.fc1",
             "mlp.c_proj": "mlp.fc2", "transformer.resblocks.": "blocks."}
    for k, v in vis.items():
        for old, new in names.items():
            k = k.replace(old, new)
        out[k] = v
    return out


def open_clip_state_dict(meta_sd):
    """open_clip's PE-Core-* layout (CustomTextCLIP): the timm tower under `visual.trunk.`, the text keys
    under `text.`, logit_scale at the top."""
    out = {"visual.trunk." + k: v for k, v in timm_state_dict(meta_sd).items()}
    text = {k if k == "logit_scale" else "text." + k: v for k, v in meta_sd.items() if not k.startswith("visual.")}
    return out | text


def save(sd, path):
    """torch.save, or safetensors for a `.safetensors` path (which refuses tensors sharing memory)."""
    if path.suffix == ".safetensors":
        pytest.importorskip("safetensors.torch").save_file({k: v.contiguous().clone() for k, v in sd.items()}, path)
    else:
        torch.save(sd, path)


def assert_same_outputs(a, b, text=True):
    with torch.no_grad():
        enc_a = a.encode_image if hasattr(a, "encode_image") else a
        enc_b = b.encode_image if hasattr(b, "encode_image") else b
        assert torch.equal(enc_a(IMG), enc_b(IMG))
        if text:
            assert torch.equal(a.encode_text(TOKENS), b.encode_text(TOKENS))


def test_meta_layout_round_trip_with_wrappers(model, tmp_path):
    sd = meta_state_dict(model)
    assert "transformer.resblocks.0.attn.in_proj_weight" in sd
    assert "visual.attn_pool.attn.in_proj_weight" in sd
    for i, wrapped in enumerate([sd, {"state_dict": sd}, {"weights": {"module." + k: v for k, v in sd.items()}}]):
        torch.save(wrapped, tmp_path / f"{i}.pt")
        loaded = load_clip(tmp_path / f"{i}.pt", config=CFG)
        assert_same_outputs(model, loaded)
        assert not loaded.training and all(p.requires_grad for p in loaded.parameters())
        # the vision tower alone from the full-CLIP file
        assert_same_outputs(model.visual, load_vision(tmp_path / f"{i}.pt", config=CFG), text=False)


def test_save_clip_meta_layout_writes_meta_keys(model, tmp_path):
    save_clip_meta_layout(model, tmp_path / "m.pt")
    saved = torch.load(tmp_path / "m.pt", weights_only=True)
    reference = meta_state_dict(model)
    assert set(saved) == set(reference)
    assert all(torch.equal(saved[k], reference[k]) for k in saved)
    assert_same_outputs(model, load_clip(tmp_path / "m.pt", config=CFG))
    # a vision tower is saved as Meta's vision-only file (no `visual.` prefix)
    save_clip_meta_layout(model.visual, tmp_path / "v.pt")
    vis = torch.load(tmp_path / "v.pt", weights_only=True)
    assert "transformer.resblocks.1.attn.in_proj_weight" in vis and "proj" in vis
    assert_same_outputs(model.visual, load_vision(tmp_path / "v.pt", config=CFG), text=False)
    with pytest.raises(CheckpointError, match="vision-only"):
        load_clip(tmp_path / "v.pt", config=CFG)


def test_timm_layout_round_trip(model, tmp_path):
    tsd = timm_state_dict(meta_state_dict(model))
    assert "blocks.1.attn.qkv.weight" in tsd and "attn_pool.kv.bias" in tsd
    torch.save(tsd, tmp_path / "timm.pt")
    assert_same_outputs(model.visual, load_vision(tmp_path / "timm.pt", config=CFG), text=False)
    # the converted keys are exactly Meta's vision-only layout
    vision_meta = {k[len("visual."):] for k in meta_state_dict(model) if k.startswith("visual.")}
    assert set(read_state_dict(tmp_path / "timm.pt")) == vision_meta


@pytest.mark.parametrize("name", ["open_clip_pytorch_model.bin", "open_clip_model.safetensors"])
def test_open_clip_layout_round_trip(model, tmp_path, name):
    """The two files Hugging Face's timm/PE-Core-* repos hold: the whole CLIP, for load_clip and load_vision."""
    ocsd = open_clip_state_dict(meta_state_dict(model))
    assert {"visual.trunk.blocks.1.attn.qkv.weight", "text.transformer.resblocks.0.attn.in_proj_weight"} <= set(ocsd)
    save(ocsd, tmp_path / name)
    assert_same_outputs(model, load_clip(tmp_path / name, config=CFG))
    assert_same_outputs(model.visual, load_vision(tmp_path / name, config=CFG), text=False)
    assert set(read_state_dict(tmp_path / name)) == set(meta_state_dict(model))


def test_timm_layout_maps_each_layernorm_to_its_own(model, tmp_path):
    """Freshly built LayerNorms are all weight 1 / bias 0, so a swapped name (norm1/norm2, norm_pre/norm,
    attn_pool.norm) would load the same values: every parameter gets its own values first. A RoPE table that a
    timm version saved is recomputed, not reported as an unexpected key."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    tsd = timm_state_dict(meta_state_dict(model)) | {"rope.pos_embed": torch.zeros(5, 16)}
    torch.save(tsd, tmp_path / "timm.pt")
    assert_same_outputs(model.visual, load_vision(tmp_path / "timm.pt", config=CFG), text=False)


def test_half_precision_checkpoint_loads_as_float32(model, tmp_path):
    # Meta's model holds fp32: a checkpoint saved in half precision is converted, not kept in fp16
    torch.save({k: v.half() for k, v in meta_state_dict(model).items()}, tmp_path / "half.pt")
    loaded = load_clip(tmp_path / "half.pt", config=CFG)
    assert {p.dtype for p in loaded.parameters()} == {torch.float32}
    assert torch.equal(loaded.visual.proj, model.visual.proj.half().float())


def test_timm_nonzero_head_bias_is_an_error(model, tmp_path):
    tsd = timm_state_dict(meta_state_dict(model))
    tsd["head.bias"][3] = 0.5
    torch.save(tsd, tmp_path / "timm.pt")
    with pytest.raises(CheckpointError, match="head.bias"):
        load_vision(tmp_path / "timm.pt", config=CFG)


@pytest.mark.parametrize("corruption, expected", [
    ("missing", r"missing keys \(1\):\n    visual.ln_post.bias"),
    ("extra", r"unexpected keys \(1\):\n    visual.extra_head.weight"),
    ("shape", r"wrong shapes \(1\):\n    visual.transformer.resblocks.1.attn.in_proj_weight: checkpoint \(96, 31\)"),
])
def test_corrupted_checkpoint_names_the_key(model, tmp_path, corruption, expected):
    sd = meta_state_dict(model)
    if corruption == "missing":
        del sd["visual.ln_post.bias"]
    elif corruption == "extra":
        sd["visual.extra_head.weight"] = torch.zeros(3)
    else:
        sd["visual.transformer.resblocks.1.attn.in_proj_weight"] = torch.zeros(96, 31)
    torch.save(sd, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=expected) as err:
        load_clip(tmp_path / "bad.pt", config=CFG)
    assert "a checkpoint of that config?" not in str(err.value)  # the model's own tower: no other config to name
    with pytest.raises(CheckpointError, match=expected.replace("visual.", "")):
        load_vision(tmp_path / "bad.pt", config=CFG)


def test_wrong_config_counts_every_problem_lists_the_first_and_names_the_checkpoint_s_config(model, tmp_path):
    save_clip_meta_layout(model, tmp_path / "m.pt")
    with pytest.raises(CheckpointError) as err:
        load_clip(tmp_path / "m.pt", config="demo-tiny")
    assert "  missing keys (" in str(err.value)  # demo-tiny has more blocks
    assert "a checkpoint of that config?" not in str(err.value)  # the test's tower is no known config
    # another known config's checkpoint (L14 into demo-tiny listed 311 keys): LISTED_KEYS of each kind, counted
    torch.manual_seed(0)
    save_clip_meta_layout(CLIP(get_config("demo-tiny")), tmp_path / "tiny.pt")
    with pytest.raises(CheckpointError) as err:
        load_vision(tmp_path / "tiny.pt", config=CFG)
    lines = str(err.value).splitlines()
    own = VisionTransformer(CFG.vision).state_dict()
    assert lines[1] == f"  unexpected keys ({4 * 12}):" and lines[2:13] == [  # demo-tiny's blocks 2..5, 12 keys each
        f"    transformer.resblocks.2.{k}" for k in ("ln_1.weight", "ln_1.bias", "attn.in_proj_weight",
                                                     "attn.in_proj_bias", "attn.out_proj.weight", "attn.out_proj.bias",
                                                     "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias")
    ] + ["    ... and 38 more"]
    assert lines[13] == f"  wrong shapes ({len(own)}):"  # width 64 against 32: every tensor of the tower
    assert lines[14:17] == ["    class_embedding: checkpoint (64,), model (32,)",
                            "    positional_embedding: checkpoint (65, 64), model (5, 32)",
                            "    proj: checkpoint (64, 64), model (32, 16)"] and lines[-2] == "    ... and 33 more"
    assert lines[-1] == "  (its vision tower is that of demo-tiny: a checkpoint of that config?)"


def test_not_a_state_dict_and_missing_file(tmp_path):
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="list.pt"):
        load_clip(tmp_path / "list.pt", config=CFG)
    with pytest.raises(FileNotFoundError, match="facebook/PE-Core-L14-336"):
        load_clip(tmp_path / "nope.pt", config=CFG)


def test_random_init_without_checkpoint():
    assert load_clip(None, config=CFG).visual.proj.shape == (32, 16)
    assert load_vision(None, config="demo-tiny").cfg.width == 64


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
@pytest.mark.parametrize("damage", ["git-lfs-pointer", "html-page", "junk", "truncated", "empty"])
def test_unreadable_checkpoint_names_the_file_causes_and_source(model, tmp_path, damage, suffix):
    # torch alone says "Weights only load failed ... weights_only=False will likely succeed" (LFS pointer,
    # HTML), "KeyError: 0" (these junk bytes), "failed finding central directory" (truncated): no path;
    # safetensors says "Error while deserializing header: incomplete metadata, file not fully covered"
    save(meta_state_dict(model), tmp_path / f"good{suffix}")
    whole = (tmp_path / f"good{suffix}").read_bytes()
    content = {"git-lfs-pointer": b"version https://git-lfs.github.com/spec/v1\noid sha256:0123\nsize 2700000000\n",
               "html-page": b"<!DOCTYPE html><html><body>Sign in to continue</body></html>",
               "junk": random.Random(20).randbytes(4096), "truncated": whole[: len(whole) // 2],
               "empty": b""}[damage]
    path = tmp_path / f"PE-Core-L14-336{suffix}"
    path.write_bytes(content)
    kind = {".pt": "PyTorch checkpoint", ".safetensors": "safetensors file"}[suffix]
    for load in (load_clip, load_vision):
        with pytest.raises(CheckpointError) as err:
            load(path, config=CFG)
        message = str(err.value)
        assert message.startswith(f"{path} ({len(content):,} bytes) is not a readable {kind}")
        for cause in ("truncated", "Git LFS pointer", "HTML page", "facebook/PE-Core-L14-336"):
            assert cause in message
        assert "weights_only" not in message  # torch's advice to unpickle arbitrary code is not passed on
    # reproduce --profile full reports it with the other missing inputs, before preparing any data
    problems = missing_full_inputs(get_profile("full").with_paths(checkpoint=path))
    assert f"--checkpoint {path} ({len(content):,} bytes) is not a readable {kind}" in "\n".join(problems)


def test_safetensors_without_the_package_is_one_error(model, tmp_path, monkeypatch):
    save(meta_state_dict(model), tmp_path / "m.safetensors")
    monkeypatch.setitem(sys.modules, "safetensors", None)  # `import safetensors` now raises ImportError
    for read in (read_state_dict, check_readable):
        with pytest.raises(CheckpointError, match="m.safetensors: reading .safetensors needs `pip install"):
            read(tmp_path / "m.safetensors")


@pytest.mark.skipif(not Path("/proc/self/io").is_file(), reason="counts bytes read with Linux's /proc/self/io")
def test_check_readable_reads_the_directory_not_the_weights(tmp_path):
    def bytes_read() -> int:
        with open("/proc/self/io") as io:
            return int(next(line for line in io if line.startswith("rchar")).split()[1])

    path = tmp_path / "big.pt"
    torch.save({f"w{i}": torch.zeros(512, 512) for i in range(16)}, path)  # 16 MiB of weights
    before = bytes_read()
    check_readable(path)
    assert bytes_read() - before < path.stat().st_size / 20
    assert not [p for p in missing_full_inputs(get_profile("full").with_paths(checkpoint=path))
                if p.startswith("--checkpoint")]
    # a file torch.save wrote before torch 1.6 cannot be memory-mapped: it is loaded whole, not refused
    torch.save({"w": torch.zeros(3)}, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    check_readable(tmp_path / "legacy.pt")
