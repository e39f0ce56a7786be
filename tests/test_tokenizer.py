"""CLIP BPE tokenizer: pinned ids of the thesis prompts, an independent naive BPE, padding/truncation, training."""
import gzip
import html
import re
from pathlib import Path

import ftfy
import pytest
import torch

from replication.tokenizer import MergesError, bytes_to_unicode, get_tokenizer, read_merges, tokenize, train_bpe
from replication.zero_shot import PROMPTS

BPE = Path(__file__).resolve().parents[2] / "shared" / "tokenizer" / "bpe_simple_vocab_16e6.txt.gz"
needs_bpe = pytest.mark.skipif(not BPE.is_file(), reason=f"CLIP merges file not found at {BPE}")
SOT, EOT = 49406, 49407

# Computed once with naive_ids below (and identical with the library), then pinned. Some are well known
# CLIP ids: "a</w>" 320, "photo</w>" 1125, "of</w>" 539, "and</w>" 537. Digits are single-character words ("0</w>" 271).
PINNED = {
    "A photo of a person between 0 and 2 years old": [320, 1125, 539, 320, 2533, 1957, 271, 537, 273, 1151, 896],
    "A photo of a person between 3 and 9 years old": [320, 1125, 539, 320, 2533, 1957, 274, 537, 280, 1151, 896],
    "A photo of a person between 10 and 19 years old":
        [320, 1125, 539, 320, 2533, 1957, 272, 271, 537, 272, 280, 1151, 896],
    "A photo of a person between 20 and 29 years old":
        [320, 1125, 539, 320, 2533, 1957, 273, 271, 537, 273, 280, 1151, 896],
    "A photo of a person between 30 and 39 years old":
        [320, 1125, 539, 320, 2533, 1957, 274, 271, 537, 274, 280, 1151, 896],
    "A photo of a person between 40 and 49 years old":
        [320, 1125, 539, 320, 2533, 1957, 275, 271, 537, 275, 280, 1151, 896],
    "A photo of a person between 50 and 59 years old":
        [320, 1125, 539, 320, 2533, 1957, 276, 271, 537, 276, 280, 1151, 896],
    "A photo of a person between 60 and 69 years old":
        [320, 1125, 539, 320, 2533, 1957, 277, 271, 537, 277, 280, 1151, 896],
    "A photo of a person 70 years old or older": [320, 1125, 539, 320, 2533, 278, 271, 1151, 896, 541, 7700],
    "A photo of a male person": [320, 1125, 539, 320, 2801, 2533],
    "A photo of a female person": [320, 1125, 539, 320, 3970, 2533],
    "A photo of a surprised person": [320, 1125, 539, 320, 8949, 2533],
    "A photo of a fearful person": [320, 1125, 539, 320, 8744, 857, 2533],
    "A photo of a disgusted person": [320, 1125, 539, 320, 41977, 2533],
    "A photo of a happy person": [320, 1125, 539, 320, 900, 2533],
    "A photo of a sad person": [320, 1125, 539, 320, 3719, 2533],
    "A photo of an angry person": [320, 1125, 539, 550, 9054, 2533],
    "A photo of a neutral person": [320, 1125, 539, 320, 17011, 2533],
}


def naive_ids(texts, path):
    """A deliberately naive CLIP BPE (ASCII text only): byte table built the long way, then every merge
    applied in rank order in one pass over the merges list per word (equivalent for a learned merges file,
    where a merge always comes after the merges that create its parts)."""
    merges = [tuple(m.split()) for m in gzip.open(path).read().decode("utf-8").split("\n")[1:48895]]
    printable = [b for b in range(256) if 33 <= b <= 126 or 161 <= b <= 172 or 174 <= b <= 255]
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b], extra = chr(256 + extra), extra + 1
    symbols = [table[b] for b in printable] + [table[b] for b in range(256) if b not in printable]
    ids = {s: i for i, s in enumerate(symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges])}
    cache, result = {}, []
    for text in texts:
        t = re.sub(r"\s+", " ", html.unescape(html.unescape(ftfy.fix_text(text)))).strip().lower()
        out = []
        for w in re.findall(r"'s|'t|'re|'ve|'m|'ll|'d|[a-z]+|[0-9]|[^\sa-z0-9]+", t):
            if w not in cache:
                sym = [table[b] for b in w.encode()]
                sym[-1] += "</w>"
                for a, b in merges:
                    if a + b not in "".join(sym):  # cheap pre-check; the exact check is below
                        continue
                    i, new = 0, []
                    while i < len(sym):
                        if i + 1 < len(sym) and sym[i] == a and sym[i + 1] == b:
                            new.append(a + b)
                            i += 2
                        else:
                            new.append(sym[i])
                            i += 1
                    sym = new
                cache[w] = [ids[s] for s in sym]
            out += cache[w]
        result.append(out)
    return result


@needs_bpe
def test_thesis_prompts_pinned_ids():
    prompts = [p for task in PROMPTS.values() for p in task]
    assert sorted(prompts) == sorted(PINNED)
    tokens = tokenize(prompts, BPE)
    assert tokens.dtype == torch.long and tokens.shape == (18, 32)
    for row, prompt in zip(tokens, prompts):
        expected = [SOT] + PINNED[prompt] + [EOT]
        assert row.tolist() == expected + [0] * (32 - len(expected)), prompt


@needs_bpe
def test_library_agrees_with_naive_bpe():
    texts = list(PINNED) + ["Hello world, it's   a TEST of the tokenizer's merges!!", "photographs 2025 (x)"]
    tok = get_tokenizer(BPE)
    assert [tok.encode(t) for t in texts] == naive_ids(texts, BPE)
    assert naive_ids(list(PINNED), BPE) == list(PINNED.values())


@needs_bpe
def test_vocabulary_and_cleaning():
    tok = get_tokenizer(BPE)
    assert (tok.vocab_size, tok.sot_id, tok.eot_id) == (49408, SOT, EOT)
    assert len(read_merges(BPE)) > 48894  # the file holds more merges than CLIP uses
    assert get_tokenizer(str(BPE)) is tok  # cached per path
    # cleaning: HTML unescaped twice, whitespace collapsed, lower-cased, mojibake fixed by ftfy
    assert tok.encode("A  PHOTO &amp;amp; \n of") == tok.encode("a photo & of")
    assert tok.encode("cafÃ©") == tok.encode("café")
    assert tok.decode(tok("A photo of an angry person")[0]) == "a photo of an angry person"
    # id 0 is the byte "!" (not only padding): "!(" is [0, 263] and must survive decoding
    assert tok.encode("!(") == [0, 263]
    assert tok.decode(tok("wow !(")[0]) == "wow !("


@needs_bpe
def test_padding_and_truncation():
    tok = get_tokenizer(BPE)
    word = tok.encode("photo")
    assert word == [1125]
    exact = tokenize(" ".join(["photo"] * 30), BPE)[0]  # SOT + 30 + EOT = 32: fits exactly
    assert exact.tolist() == [SOT] + [1125] * 30 + [EOT]
    long = tokenize([" ".join(["photo"] * 31), "photo " * 100], BPE)  # cut to 32, EOT forced last
    for row in long:
        assert row.tolist() == [SOT] + [1125] * 30 + [EOT]
    short = tokenize("photo", BPE)[0]
    assert short.tolist() == [SOT, 1125, EOT] + [0] * 29
    assert tokenize("photo", BPE, context_length=5)[0].tolist() == [SOT, 1125, EOT, 0, 0]
    assert int(long.argmax(-1)[0]) == 31  # the text tower's argmax pooling finds the EOT


def test_train_bpe_by_hand(tmp_path):
    # "low" x3, "lower" x1. Pair counts: (l,o) 4, (o,w</w>) 3, (o,w) 1, (w,e) 1, (e,r</w>) 1 -> merge l+o;
    # then (lo,w</w>) 3 -> merge; every remaining pair occurs once -> stop.
    for name in ("m.txt", "m.txt.gz"):
        merges = train_bpe(["low low", "LOW lower"], num_merges=10, out_path=tmp_path / name)
        assert merges == [("l", "o"), ("lo", "w</w>")]
        assert read_merges(tmp_path / name) == merges
    raw = (tmp_path / "m.txt").read_text()
    assert raw == "#version: 0.2\nl o\nlo w</w>\n"
    # ids: 512 + merge rank, then SOT = 514, EOT = 515
    tok = get_tokenizer(tmp_path / "m.txt.gz")
    assert (tok.vocab_size, tok.sot_id, tok.eot_id) == (516, 514, 515)
    assert tok("low lower")[0, :8].tolist() == [514, 513, 512, ord("w") - 33, ord("e") - 33, 256 + ord("r") - 33, 515, 0]
    assert train_bpe(["low low", "LOW lower"], num_merges=1, out_path=tmp_path / "one.txt") == [("l", "o")]


def test_bad_merges_file(tmp_path):
    (tmp_path / "bad.txt").write_text("#version: 0.2\na b\nabc\n")
    with pytest.raises(MergesError, match=r"bad.txt, line 3"):
        read_merges(tmp_path / "bad.txt")
    # a download cut short, or a file in another encoding: MergesError (which `train` reports in one line)
    (tmp_path / "cut.txt.gz").write_bytes(gzip.compress(b"#version: 0.2\n" + b"a b\n" * 100)[:30])
    with pytest.raises(MergesError, match=r"cut.txt.gz: not a merges file \(EOFError: .*bpe_simple_vocab_16e6"):
        read_merges(tmp_path / "cut.txt.gz")
    (tmp_path / "latin1.txt").write_bytes("#version: 0.2\na \xe9\n".encode("latin-1"))
    with pytest.raises(MergesError, match=r"latin1.txt: not a merges file \(UnicodeDecodeError: "):
        read_merges(tmp_path / "latin1.txt")
    with pytest.raises(FileNotFoundError, match="bpe_simple_vocab_16e6"):
        tokenize("x", tmp_path / "missing.txt.gz")


@pytest.mark.parametrize("text", ["#version: 0.2\n", "#version: 0.2\n\n\n", ""])
def test_merges_file_without_merges_is_an_error(tmp_path, text):
    # it used to give a 514-token vocabulary (bytes, SOT, EOT) that split every word into bytes
    path = tmp_path / "header-only.txt"
    path.write_text(text)
    with pytest.raises(ValueError, match=r"header-only.txt: no BPE merges .*bpe_simple_vocab_16e6.txt.gz"):
        read_merges(path)
    with pytest.raises(ValueError, match="header-only.txt: no BPE merges"):
        tokenize("a photo", path)


def test_byte_table_is_clips():
    """CLIP's (= GPT-2's) byte -> unicode table, whose characters the merges file is written in: printable bytes
    are themselves, the other 68 take chr(256), chr(257), ... in byte order (space is the well-known 'Ġ')."""
    table = bytes_to_unicode()
    assert len(set(table.values())) == 256
    assert [table[b] for b in (0, 10, 32, 127, 160, 173)] == ["Ā", "Ċ", "Ġ", "ġ", "ł", "Ń"]
    assert table[ord("a")] == "a" and table[0xE9] == "é"


@needs_bpe
def test_html_is_unescaped_twice_even_where_ftfy_does_not():
    # ftfy unescapes entities itself, but not in text holding '<': there only CLIP's two html.unescape calls do
    tok = get_tokenizer(BPE)
    assert tok.encode("a < b &amp;amp; c") == tok.encode("a < b & c")


def test_train_bpe_breaks_ties_by_the_smallest_pair(tmp_path):
    # (a, b</w>) and (c, d</w>) both occur twice: the documented tie-break takes the smallest pair first
    assert train_bpe(["cd ab", "ab cd"], num_merges=10, out_path=tmp_path / "m.txt") == [("a", "b</w>"), ("c", "d</w>")]
