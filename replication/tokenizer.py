"""The CLIP text tokenizer: byte-level BPE (Radford et al. 2021), as used by PE-Core.

Meta's `core/vision_encoder/tokenizer.py` is "copied from openai/CLIP":
clean the text (ftfy.fix_text, HTML-unescape twice, collapse whitespace, lower-case), split it with CLIP's
regex into words/numbers/punctuation, map each UTF-8 byte to a printable unicode character, then apply
the BPE merges of `bpe_simple_vocab_16e6.txt.gz` in rank order. The sequence is
[SOT] + tokens + [EOT], zero-padded to the context length (32 for PE-Core L14); a longer one is cut
and its last token forced to EOT, so the text tower's argmax pooling always finds an EOT.

Vocabulary ids: 256 byte symbols, the same 256 with `</w>` (end of word), one id per merge, then
SOT and EOT: 49,408 ids with the 48,894 merges CLIP uses (EOT = 49407, the largest id).

`train_bpe` learns a small merges file of the same format from a corpus (the demo profile has no real
merges file, so it trains one on its captions).
"""
from __future__ import annotations

import collections
import functools
import gzip
import html
import zlib
from pathlib import Path

import regex
import torch

from .files import atomic_write

SOT, EOT = "<start_of_text>", "<end_of_text>"
# CLIP's pre-tokenizer: the special tokens, English contractions, runs of letters, single digits,
# runs of other non-space characters.
_PATTERN = regex.compile(
    rf"{SOT}|{EOT}|'s|'t|'re|'ve|'m|'ll|'d|[\p{{L}}]+|[\p{{N}}]|[^\s\p{{L}}\p{{N}}]+", regex.IGNORECASE
)
# CLIP's merges file and where to get it (the README's download table), for every message about a missing one
CLIP_MERGES = ("CLIP's bpe_simple_vocab_16e6.txt.gz, from facebookresearch/perception_models (core/vision_encoder/), "
               "OpenAI CLIP's clip/ folder or an installed clip/open_clip package")
NUM_BASE_SYMBOLS = 512  # 256 bytes + 256 bytes with `</w>`
NUM_SPECIAL_TOKENS = 2  # SOT and EOT, the last two ids
CLIP_VOCAB_SIZE = 49408


def merges_in_vocab(vocab_size: int) -> int:
    """How many merges a vocabulary of `vocab_size` ids holds (vocab_size - 514): the other ids are the 512
    byte symbols, SOT and EOT."""
    return vocab_size - NUM_BASE_SYMBOLS - NUM_SPECIAL_TOKENS


@functools.lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """Byte -> printable unicode character. Printable latin-1 bytes map to themselves, the other 68 to
    chr(256+n), so BPE never sees whitespace/control characters (CLIP's table, same order)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def clean(text: str) -> str:
    """CLIP's text cleaning: fix mojibake, unescape HTML (twice), collapse whitespace, lower-case."""
    # imported here, not with the module: only text needs ftfy, and the GPU machines' image lacks it, where
    # `bench` and everything else that imports the library must run (README, "Dependencies")
    import ftfy

    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return " ".join(text.split()).lower()


def pretokenize(text: str) -> list[str]:
    """Cleaned text -> CLIP's words, each as its byte-symbol string."""
    enc = bytes_to_unicode()
    return ["".join(enc[b] for b in word.encode("utf-8")) for word in _PATTERN.findall(clean(text))]


class MergesError(ValueError):
    """A merges file that is not one, or not the one the text tower learned; the message names it."""


def read_merges(path: str | Path, max_merges: int | None = None) -> list[tuple[str, str]]:
    """Merges of a BPE file (gzip or plain text): a header line, then one 'a b' pair per line, by rank."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"BPE merges file not found: {path} ({CLIP_MERGES})")
    raw = path.read_bytes()
    try:
        text = (gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw).decode("utf-8")
    except (EOFError, OSError, zlib.error, UnicodeDecodeError) as err:  # a download cut short, another file
        raise MergesError(f"{path}: not a merges file ({type(err).__name__}: {err}); expected {CLIP_MERGES}, "
                          f"or the demo's file written by train_bpe") from None
    lines = text.split("\n")[1:]  # line 0 is the '#version: 0.2' header
    merges = []
    for lineno, line in enumerate(lines, start=2):
        if not line:
            continue
        pair = tuple(line.split())
        if len(pair) != 2:
            raise MergesError(f"{path}, line {lineno}: expected a merge 'a b', got {line!r}")
        merges.append(pair)
    if not merges:
        # without merges every word falls apart into bytes: a 514-token vocabulary that tokenizes silently
        raise MergesError(f"{path}: no BPE merges after the header line (expected CLIP's "
                         f"bpe_simple_vocab_16e6.txt.gz, or the demo's file written by train_bpe)")
    return merges[:max_merges]


def _merge(symbols, pair) -> list[str]:
    """Replace every occurrence of the adjacent `pair` in `symbols`, left to right, by its concatenation."""
    merged, i = [], 0
    while i < len(symbols):
        if i < len(symbols) - 1 and (symbols[i], symbols[i + 1]) == pair:
            merged.append(symbols[i] + symbols[i + 1])
            i += 2
        else:
            merged.append(symbols[i])
            i += 1
    return merged


class Tokenizer:
    """Byte-level BPE tokenizer of one merges file (CLIP's SimpleTokenizer)."""

    def __init__(self, bpe_path: str | Path, context_length: int = 32, vocab_size: int = CLIP_VOCAB_SIZE):
        # CLIP keeps only the first vocab_size - 514 merges of the (longer) file.
        merges = read_merges(bpe_path, max_merges=merges_in_vocab(vocab_size))
        base = list(bytes_to_unicode().values())
        vocab = base + [s + "</w>" for s in base] + ["".join(m) for m in merges] + [SOT, EOT]
        self.encoder = {s: i for i, s in enumerate(vocab)}
        self.decoder = {i: s for i, s in enumerate(vocab)}
        self.ranks = {m: i for i, m in enumerate(merges)}
        self.context_length = context_length
        self.sot_id, self.eot_id = self.encoder[SOT], self.encoder[EOT]
        self.vocab_size = len(vocab)
        self._cache = {SOT: [self.sot_id], EOT: [self.eot_id]}

    def bpe(self, word: str) -> list[str]:
        """Merge the symbols of one word, lowest-rank pair first, until no known pair remains."""
        symbols = list(word[:-1]) + [word[-1] + "</w>"]
        while len(symbols) > 1:
            pairs = set(zip(symbols, symbols[1:]))
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            symbols = _merge(symbols, best)
        return symbols

    def encode(self, text: str) -> list[int]:
        """Text -> BPE ids, without SOT/EOT."""
        ids = []
        for word in pretokenize(text):
            if word not in self._cache:
                self._cache[word] = [self.encoder[s] for s in self.bpe(word)]
            ids.extend(self._cache[word])
        return ids

    def decode(self, ids) -> str:
        """Ids -> text (SOT dropped, cut at the first EOT); the inverse of encode up to cleaning.

        The zero padding only follows EOT: id 0 before it is the byte symbol "!" (as in "!(" -> [0, 263])."""
        ids = [int(i) for i in ids]
        if self.eot_id in ids:
            ids = ids[: ids.index(self.eot_id)]
        dec = {c: b for b, c in bytes_to_unicode().items()}
        text = "".join(self.decoder[i] for i in ids if i != self.sot_id)
        return bytearray(dec[c] for c in text).decode("utf-8", errors="replace").replace("</w>", " ").strip()

    def __call__(self, texts: str | list[str]) -> torch.Tensor:
        """Texts -> LongTensor (N, context_length): [SOT] + ids + [EOT], zero padding, EOT forced last."""
        if isinstance(texts, str):
            texts = [texts]
        out = torch.zeros(len(texts), self.context_length, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = [self.sot_id] + self.encode(text) + [self.eot_id]
            if len(ids) > self.context_length:
                ids = ids[: self.context_length]
                ids[-1] = self.eot_id
            out[row, : len(ids)] = torch.tensor(ids)
        return out


@functools.lru_cache(maxsize=8)
def _cached_tokenizer(path: str, context_length: int, vocab_size: int, mtime: float) -> Tokenizer:
    return Tokenizer(path, context_length, vocab_size)


def get_tokenizer(bpe_path: str | Path, context_length: int = 32, vocab_size: int = CLIP_VOCAB_SIZE) -> Tokenizer:
    """The Tokenizer of a merges file, built once per (path, settings, file version)."""
    path = Path(bpe_path).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"BPE merges file not found: {path} ({CLIP_MERGES})")
    return _cached_tokenizer(str(path), context_length, vocab_size, path.stat().st_mtime)


def tokenize(texts: str | list[str], bpe_path: str | Path, context_length: int = 32,
             vocab_size: int = CLIP_VOCAB_SIZE) -> torch.Tensor:
    """Texts -> LongTensor (N, context_length) of CLIP token ids (see Tokenizer.__call__)."""
    return get_tokenizer(bpe_path, context_length, vocab_size)(texts)


def train_bpe(texts, num_merges: int, out_path: str | Path) -> list[tuple[str, str]]:
    """Learn up to `num_merges` BPE merges from `texts` (Sennrich et al. 2016) on CLIP's byte symbols and
    write them as a merges file (plain text; gzip if out_path ends in .gz). Returns the merges.

    Each step merges the most frequent adjacent pair over all words (ties: the lexicographically smallest
    pair, so the result is deterministic). Stops early when no pair occurs twice. A model using the file
    needs vocab_size >= 514 + len(merges).
    """
    words = collections.Counter()
    for text in texts:
        for w in pretokenize(text):
            words[tuple(w[:-1]) + (w[-1] + "</w>",)] += 1
    merges = []
    while len(merges) < num_merges:
        pairs = collections.Counter()
        for word, n in words.items():
            for pair in zip(word, word[1:]):
                pairs[pair] += n
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        if pairs[best] < 2:
            break
        merges.append(best)
        new_words = collections.Counter()
        for word, n in words.items():
            new_words[tuple(_merge(word, best))] += n
        words = new_words
    data = ("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges)).encode("utf-8")
    encoded = gzip.compress(data, mtime=0) if Path(out_path).suffix == ".gz" else data
    atomic_write(out_path, lambda tmp: tmp.write_bytes(encoded))
    return merges
