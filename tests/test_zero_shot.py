"""Zero-shot baseline (thesis §4.2): the exact prompts, and logits = cosine similarities."""
import os

import pytest
import torch
import torch.nn.functional as F

from replication import runs
from replication.checkpoint import load_clip
from replication.config import CLIPConfig, TextConfig, get_config
from replication.labels import TASKS
from replication.pe import CLIP
from replication.tokenizer import MergesError, get_tokenizer, tokenize, train_bpe
from replication.zero_shot import PROMPTS, ZeroShotClassifier
from test_tokenizer import BPE, needs_bpe


def test_prompts_follow_thesis_templates():
    """§4.2's templates, filled in as the thesis's own zero-shot scripts do (the open-ended 70+ bin included)."""
    assert PROMPTS == {
        "age": [
            "A photo of a person between 0 and 2 years old",
            "A photo of a person between 3 and 9 years old",
            "A photo of a person between 10 and 19 years old",
            "A photo of a person between 20 and 29 years old",
            "A photo of a person between 30 and 39 years old",
            "A photo of a person between 40 and 49 years old",
            "A photo of a person between 50 and 59 years old",
            "A photo of a person between 60 and 69 years old",
            "A photo of a person 70 years old or older",
        ],
        "gender": ["A photo of a male person", "A photo of a female person"],
        "emotion": [  # RAF-DB order: Surprise, Fear, Disgust, Happy, Sad, Angry, Neutral
            "A photo of a surprised person",
            "A photo of a fearful person",
            "A photo of a disgusted person",
            "A photo of a happy person",
            "A photo of a sad person",
            "A photo of an angry person",
            "A photo of a neutral person",
        ],
    }
    assert {t: len(p) for t, p in PROMPTS.items()} == {t: len(c) for t, c in TASKS.items()}


@pytest.fixture(scope="module")
def demo_setup(tmp_path_factory):
    # demo-tiny has a 1024-id vocabulary: a merges file trained on the prompts (<= 510 merges) fits it.
    bpe = tmp_path_factory.mktemp("bpe") / "prompts.txt.gz"
    train_bpe([p for task in PROMPTS.values() for p in task], num_merges=200, out_path=bpe)
    torch.manual_seed(0)
    return load_clip(None, config="demo-tiny"), bpe


def test_logits_are_cosine_similarities(demo_setup):
    clip, bpe = demo_setup
    zs = ZeroShotClassifier(clip, bpe)
    images = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        logits = zs(images)
        image = clip.encode_image(images)
    assert list(logits) == ["age", "gender", "emotion"] and zs.tasks == ("age", "gender", "emotion")
    for task, prompts in PROMPTS.items():
        with torch.no_grad():
            text = clip.encode_text(tokenize(prompts, bpe))
        # cosine similarity written out: dot product over the product of the norms
        expected = (image @ text.T) / (image.norm(dim=-1, keepdim=True) * text.norm(dim=-1)[None])
        assert logits[task].shape == (3, len(prompts))
        torch.testing.assert_close(logits[task], expected, rtol=1e-5, atol=1e-6)
        assert logits[task].abs().max() <= 1 + 1e-6
    # only the vision tower is kept (the prompt embeddings are fixed)
    assert not any(n.startswith("token_embedding") for n, _ in zs.named_parameters())
    assert ZeroShotClassifier(clip, bpe, tasks=("emotion",))(images).keys() == {"emotion"}


def test_merges_file_too_large_for_vocab_is_an_error(demo_setup, tmp_path):
    clip, _ = demo_setup
    words = [f"w{a}{b}{c}" for a in "abcdefgh" for b in "abcdefgh" for c in "abcdefgh"] * 2
    big = tmp_path / "big.txt"
    train_bpe(words + [p for task in PROMPTS.values() for p in task], num_merges=900, out_path=big)
    with pytest.raises(MergesError, match="vocab_size 1024"):
        ZeroShotClassifier(clip, big)


def clip_vocabulary_model():
    """demo-tiny's vision tower and a small text tower with CLIP's 49,408-token vocabulary (PE-Core-L14-336's)."""
    torch.manual_seed(0)
    text = TextConfig(width=16, layers=1, heads=2, mlp_dim=32, output_dim=64,
                      vocab_size=get_config("PE-Core-L14-336").text.vocab_size)
    return CLIP(CLIPConfig("clip-vocab", get_config("demo-tiny").vision, text)).eval()


def test_clip_vocabulary_needs_clip_merges_file(demo_setup):
    # the demo's merges file gives ids that all fit CLIP's vocabulary, so zero-shot used to run silently
    # on the embeddings of other tokens
    small_bpe = demo_setup[1]
    with pytest.raises(MergesError, match=rf"{small_bpe.name}: a vocabulary of \d+ tokens, but the text tower has "
                                         r"CLIP's 49,408: expected CLIP's merges file bpe_simple_vocab_16e6.txt.gz"):
        ZeroShotClassifier(clip_vocabulary_model(), small_bpe)


@needs_bpe
def test_clip_merges_file_fits_clip_vocabulary():
    assert ZeroShotClassifier(clip_vocabulary_model(), BPE, tasks=("gender",)).text_gender.shape == (2, 64)


def test_train_command_needs_the_merges_file(capsys):
    # Without --bpe the run would load the checkpoint, then fail in the tokenizer on a None path.
    argv = ["--method", "zero_shot", "--tasks", "age,gender,emotion"]
    for extra in (["--profile", "full", "--checkpoint", "PE-Core-L14-336.pt"], ["--bpe", ""]):
        with pytest.raises(SystemExit):
            runs.parse_config(argv + extra)
        assert "zero_shot needs --bpe" in capsys.readouterr().err
    cfg = runs.parse_config(argv + ["--profile", "full", "--checkpoint", "x.pt", "--bpe", "bpe.txt.gz"])
    assert cfg.bpe == os.path.abspath("bpe.txt.gz")


def small_clip(**text):
    """demo-tiny's vision tower and a one-block text tower of the given TextConfig fields."""
    torch.manual_seed(0)
    return CLIP(CLIPConfig("zs-test", get_config("demo-tiny").vision,
                           TextConfig(width=16, layers=1, heads=2, mlp_dim=32, output_dim=64, **text)))


def test_prompts_use_the_text_towers_context_length(demo_setup):
    # PE-Core-G14's text tower takes 72 tokens, not the tokenizer's default 32
    bpe = demo_setup[1]
    clip = small_clip(vocab_size=1024, context_length=24).eval()
    with torch.no_grad():
        expected = F.normalize(clip.encode_text(tokenize(PROMPTS["age"], bpe, context_length=24)), dim=-1)
    torch.testing.assert_close(ZeroShotClassifier(clip, bpe, tasks=("age",)).text_age, expected)


def test_a_token_id_equal_to_vocab_size_is_an_error(demo_setup):
    # EOT is the largest id (514 + merges + 1); a text tower one id short cannot embed it
    bpe = demo_setup[1]
    eot = get_tokenizer(bpe).eot_id
    with pytest.raises(ValueError, match=rf"token id {eot} >= the text tower's vocab_size {eot}"):
        ZeroShotClassifier(small_clip(vocab_size=eot), bpe)
    ZeroShotClassifier(small_clip(vocab_size=eot + 1), bpe)  # just enough


def test_the_clip_is_left_in_the_mode_it_was_given_in(demo_setup):
    # the prompts are embedded in eval mode; a model being trained must not come back switched to eval
    clip = small_clip(vocab_size=1024).train()
    ZeroShotClassifier(clip, demo_setup[1])
    assert all(m.training for m in clip.modules())
