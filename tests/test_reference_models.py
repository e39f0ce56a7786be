"""The hand-written PE-Core against two third-party implementations (test-only oracles, skipped where absent).

timm's `vit_pe_core_*` (its Eva class) and open_clip's `PE-Core-*` (that timm tower beside open_clip's text
transformer) are ports of Meta's model that their authors checked against Meta's released weights. Here
each is built with random weights, every parameter is moved off its initial value (LayerNorms at 1/0 and
zero biases would hide a swapped or dropped term), saved in the file its Hugging Face repository holds,
loaded by replication.checkpoint and run beside ours on the same input; the other way round, weights this
project writes in Meta's own layout are read by timm's converter of Meta's files. The tokenizer is compared with
open_clip's on open_clip's own copy of CLIP's merges file, the image preprocessing with the one open_clip
registers for Meta's PE-Core weights.
"""
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from replication.checkpoint import load_clip, load_vision, save_clip_meta_layout
from replication.config import CLIPConfig, VisionConfig, get_config
from replication.pe import image_transform
from replication.tokenizer import Tokenizer
from replication.zero_shot import PROMPTS, ZeroShotClassifier

timm = pytest.importorskip("timm")
save_file = pytest.importorskip("safetensors.torch").save_file


# float64 agreement to ~1e-10, not to 1e-15: timm keeps its RoPE tables in float32. A wrong term of the
# architecture differs by the outputs' own size (std > 1e-3 here).
F64 = dict(rtol=1e-6, atol=1e-8)


def moved(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """`model` with noise added to every parameter but timm's head.bias (PE's `proj` has none: zero in
    every converted checkpoint, and the loader refuses any other value), in eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.endswith("head.bias"):
                p.add_(0.02 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model.eval()


def saved(model: torch.nn.Module, path: Path) -> Path:
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    return path


# A tower shaped like G14's (no class token, so RoPE positions start at 0 and the pooler sees patches only)
# at a size a test can run; the text tower is unused.
_G14_SHAPED = CLIPConfig("G14-shaped", VisionConfig(56, 14, 64, 2, 2, 256, 48, use_cls_token=False),
                         get_config("demo-tiny").text)

# (our config, timm model, timm overrides): Meta's smallest tower (S16 and B16 differ from it only in sizes,
# which the parameter counts of tests/test_pe.py pin), the demo's, and the class-token-free one
SMALL_TOWERS = {
    "PE-Core-T16-384": ("PE-Core-T16-384", "vit_pe_core_tiny_patch16_384", {}),
    "demo-tiny": ("demo-tiny", "vit_pe_core_tiny_patch16_384",
                  dict(img_size=64, patch_size=8, embed_dim=64, depth=6, num_heads=2, ref_feat_shape=(8, 8),
                       num_classes=64)),
    "G14-shaped": (_G14_SHAPED, "vit_pe_core_gigantic_patch14_448",
                   dict(img_size=56, embed_dim=64, depth=2, num_heads=2, mlp_ratio=4.0, ref_feat_shape=(4, 4),
                        num_classes=48)),
}


@pytest.mark.parametrize("tower", SMALL_TOWERS)
def test_vision_tower_matches_timm(tower, tmp_path):
    """Pooled embedding and final tokens in float64: equal to rounding, for T16, demo-tiny and a G14 shape."""
    config, name, overrides = SMALL_TOWERS[tower]
    reference = moved(timm.create_model(name, pretrained=False, **overrides))
    ours = load_vision(saved(reference, tmp_path / "model.safetensors"), config=config)
    reference.double()
    ours.double()
    size = get_config(config).vision.image_size
    images = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        expected, got = reference(images), ours(images)
        assert got.shape == (2, get_config(config).vision.output_dim)
        torch.testing.assert_close(got, expected, **F64)
        torch.testing.assert_close(ours.forward_features(images), reference.forward_features(images), **F64)
        assert expected.std() > 1e-3  # 1e5 times atol: the outputs compared are not near zero


@pytest.mark.parametrize("whole_clip", [True, False], ids=["clip-file", "vision-file"])
@pytest.mark.parametrize("tower", SMALL_TOWERS)
def test_metas_layout_is_the_one_timms_converter_reads(tower, whole_clip, tmp_path):
    """The full profile loads Meta's own file (PE-Core-L14-336.pt). Weights written in Meta's key layout, as a
    whole CLIP (`visual.` keys beside the text tower's) and as a vision tower alone, go through timm's converter of
    Meta's files (eva.checkpoint_filter_fn) into timm's tower, which then computes what ours loaded from the same
    file does: key names, the q|k|v and pooler splits, the transposed `proj` and the class token are read alike."""
    from timm.models.eva import checkpoint_filter_fn

    config, name, overrides = SMALL_TOWERS[tower]
    written = moved(load_clip(None, config=config) if whole_clip else load_vision(None, config=config))
    path = tmp_path / "meta.pt"
    save_clip_meta_layout(written, path)
    reference = timm.create_model(name, pretrained=False, **overrides)
    reference.load_state_dict(checkpoint_filter_fn(torch.load(path), reference))
    ours = load_vision(path, config=config)
    reference.eval().double()
    ours.double()
    size = get_config(config).vision.image_size
    images = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        expected = reference(images)
        torch.testing.assert_close(ours(images), expected, **F64)
        assert expected.std() > 1e-3


def test_thesis_encoder_matches_timm(tmp_path):
    """PE-Core-L14-336, the thesis's encoder (§2.3), at its 336 px: timm's tower and ours agree in float32."""
    reference = moved(timm.create_model("vit_pe_core_large_patch14_336", pretrained=False))
    ours = load_vision(saved(reference, tmp_path / "model.safetensors"), config="PE-Core-L14-336")
    image = torch.randn(1, 3, 336, 336, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = reference(image)
        del reference  # 1.3 GB
        torch.testing.assert_close(ours(image), expected, rtol=1e-4, atol=1e-4)
    assert expected.std() > 0.1


@pytest.fixture(scope="module")
def open_clip_twin(tmp_path_factory):
    """open_clip's PE-Core-T-16-384 with moved weights, ours loaded from its open_clip_model.safetensors,
    both in float64, and open_clip's copy of CLIP's merges file."""
    open_clip = pytest.importorskip("open_clip")
    reference = moved(open_clip.create_model("PE-Core-T-16-384", pretrained=None))
    path = saved(reference, tmp_path_factory.mktemp("open_clip") / "open_clip_model.safetensors")
    ours = load_clip(path, config="PE-Core-T16-384")
    return reference.double(), ours.double(), Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"


def test_clip_matches_open_clip(open_clip_twin):
    """Image and text features, unnormalised and normalised, and the temperature, in float64; the texts
    include one cut to the 32-token context (EOT forced last, where the text tower pools)."""
    reference, ours, bpe = open_clip_twin
    tokenizer = Tokenizer(bpe)
    tokens = tokenizer(PROMPTS["emotion"] + ["a photo of a person " + "who is very very happy " * 8])
    assert int(tokens[-1, -1]) == tokenizer.eot_id
    images = torch.randn(2, 3, 384, 384, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(ours.encode_image(images), reference.encode_image(images), **F64)
        torch.testing.assert_close(ours.encode_text(tokens), reference.encode_text(tokens), **F64)
        for got, expected in zip(ours(images, tokens), reference(images, tokens)):
            torch.testing.assert_close(got, expected, **F64)


def test_zero_shot_scores_match_open_clip(open_clip_twin):
    """Table 4.1's baseline: each image's cosine similarity to each class prompt (§4.2), as open_clip scores it."""
    reference, ours, bpe = open_clip_twin
    tokenize = pytest.importorskip("open_clip").get_tokenizer("PE-Core-T-16-384")
    images = torch.randn(2, 3, 384, 384, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        got = ZeroShotClassifier(ours, bpe)(images)
        image = reference.encode_image(images, normalize=True)
        for task, prompts in PROMPTS.items():
            text = reference.encode_text(tokenize(prompts), normalize=True)
            torch.testing.assert_close(got[task].double(), image @ text.T, rtol=1e-5, atol=1e-6)


def test_tokenizer_matches_open_clip():
    """Ids of the thesis's prompts, of text that cleaning changes (HTML entities, escaped twice inside tags that
    keep ftfy from unescaping them; case, whitespace, accents, emoji, CJK), of text cut to the context, and of
    300 random strings."""
    open_clip = pytest.importorskip("open_clip")
    reference = open_clip.get_tokenizer("PE-Core-T-16-384")
    ours = Tokenizer(Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz")
    rng = random.Random(0)
    alphabet = "abcdefghijklmnopqrstuvwxyz ABCXYZ 0123456789 .,!?'-&; éüß 😀 中"
    texts = [p for prompts in PROMPTS.values() for p in prompts] + [
        "A  PHOTO of   an angry\tperson!!", "naïve café — “quotes” it's don't WE'LL", "emoji 😀👍, 中文, ﬁ ligature",
        "&lt;b&gt;bold&lt;/b&gt; &amp;amp;", "<b>fish &amp;amp; chips</b>", "", "   ", "a" * 200,
        "tab\tnew\nline\r\n end", "3.14159 and 20-29", "a photo of a person aged 20-29 &amp; smiling " * 5,
    ] + ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 120))) for _ in range(300)]
    expected = reference(texts)
    assert (expected[:, -1] != 0).sum() >= 5  # several texts fill the context: the cut is compared too
    assert torch.equal(ours(texts), expected)


def test_image_transform_matches_open_clip_pe_preprocessing():
    """The evaluation preprocessing (zero-shot and every test set) is open_clip's for the `meta` PE-Core-L-14-336
    weights, built from the settings open_clip registers for them (squash-resize, bilinear, mean = std = 0.5),
    bit for bit, on images of either orientation and of the modes PIL opens JPEGs and PNGs in."""
    open_clip = pytest.importorskip("open_clip")
    cfg = open_clip.get_pretrained_cfg("PE-Core-L-14-336", "meta")
    reference = open_clip.image_transform(336, is_train=False, mean=cfg["mean"], std=cfg["std"],
                                          interpolation=cfg["interpolation"], resize_mode=cfg["resize_mode"])
    rng = np.random.default_rng(0)
    for width, height in ((500, 300), (37, 91), (336, 336)):
        rgba = Image.fromarray(rng.integers(0, 256, (height, width, 4), dtype=np.uint8), "RGBA")
        for mode in ("RGB", "L", "RGBA", "P", "CMYK"):
            image = rgba.convert(mode)
            assert torch.equal(image_transform(336)(image), reference(image)), (width, height, mode)
