"""Zero-shot baseline (thesis §4.2): hand-written prompts per class, cosine similarity, argmax.

Thesis §4.2 templates:
    age     "A photo of a person between <age range> years old"
    gender  "A photo of a <gender> person"
    emotion "A photo of a/an <emotion> person"
The thesis does not list the filled-in prompts; they are worded here as in the thesis's own zero-shot code
(see _AGE_RANGE).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .labels import AGE_GROUPS, EMOTIONS, GENDERS, TASKS
from .tokenizer import CLIP_VOCAB_SIZE, MergesError, get_tokenizer

# Age: "between 0 and 2 years old" ... "between 60 and 69 years old", and "70 years old or older" for the
# open-ended last bin. §4.2 gives only the template; these are the 18 prompts of the thesis's public scripts
# that run the PE-Core-L14-336 zero-shot baseline (its evaluation and Table 4.15's concordance index), whose
# gender and emotion prompts are the ones below too (their "a photo" is our "A photo": the tokenizer lower-cases).
# The prompts decide Table 4.1's zero-shot accuracies.
_AGE_RANGE = {g: "between {} and {} years old".format(*g.split("-")) for g in AGE_GROUPS[:-1]} | {
    AGE_GROUPS[-1]: "70 years old or older"}
# Emotion: RAF-DB's class nouns/adjectives turned into the adjective describing a person, lower-case;
# EMOTION_WORDS by class id (also the emotion words of the demo's composed captions, pretrain.py).
_EMOTION_ADJECTIVE = {"Surprise": "surprised", "Fear": "fearful", "Disgust": "disgusted", "Happy": "happy",
                      "Sad": "sad", "Angry": "angry", "Neutral": "neutral"}
EMOTION_WORDS: dict[int, str] = {i: _EMOTION_ADJECTIVE[e] for i, e in enumerate(EMOTIONS)}


def article(word: str) -> str:
    # "a"/"an" by the word's first letter (sufficient for the words of these prompts and of pretrain.py's
    # captions: only "angry" takes "an").
    return "an" if word[0] in "aeiou" else "a"


PROMPTS: dict[str, list[str]] = {
    "age": [f"A photo of a person {_AGE_RANGE[g]}" for g in AGE_GROUPS],
    "gender": [f"A photo of a {g} person" for g in GENDERS],
    "emotion": [f"A photo of {article(a)} {a} person" for a in EMOTION_WORDS.values()],
}
assert {task: len(p) for task, p in PROMPTS.items()} == {task: len(c) for task, c in TASKS.items()}


class ZeroShotClassifier(nn.Module):
    """images -> {task: (B, C) cosine similarities between the image and each class prompt}.

    The prompt embeddings are computed once here (L2-normalised, buffers that follow .to(device));
    only the vision tower is kept, since the text tower is not needed afterwards.
    """

    def __init__(self, clip, bpe_path, tasks=tuple(TASKS)):
        super().__init__()
        self.tasks = tuple(tasks)
        self.visual = clip.visual
        tokenizer = get_tokenizer(bpe_path, context_length=clip.text_cfg.context_length)
        # A text tower with CLIP's vocabulary learned CLIP's merges: any other file still yields valid ids,
        # just not the ones the embeddings were trained on. (The demo's smaller vocabulary is its own file's.)
        if clip.text_cfg.vocab_size == CLIP_VOCAB_SIZE and tokenizer.vocab_size != CLIP_VOCAB_SIZE:
            raise MergesError(f"{bpe_path}: a vocabulary of {tokenizer.vocab_size:,} tokens, but the text tower "
                             f"has CLIP's {CLIP_VOCAB_SIZE:,}: expected CLIP's merges file "
                             f"bpe_simple_vocab_16e6.txt.gz")
        was_training = clip.training
        clip.eval()
        with torch.no_grad():
            for task in self.tasks:
                tokens = tokenizer(PROMPTS[task]).to(clip.text_projection.device)
                if int(tokens.max()) >= clip.text_cfg.vocab_size:
                    raise MergesError(f"{bpe_path}: token id {int(tokens.max())} >= the text tower's vocab_size "
                                     f"{clip.text_cfg.vocab_size} (merges file does not belong to this model)")
                self.register_buffer(f"text_{task}", clip.encode_text(tokens, normalize=True).float(), persistent=False)
        clip.train(was_training)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        image = F.normalize(self.visual(images).float(), dim=-1)
        return {task: image @ getattr(self, f"text_{task}").T for task in self.tasks}
