"""A plain-PyTorch replication of "Adapting Vision Language Models via parameter-efficient
fine-tuning for Multitask Classification of Age, Gender, and Emotion".

Public API (stable, used by the notebooks and by outside code):

* ``load_clip(checkpoint, config="PE-Core-L14-336")`` -> CLIP with ``encode_image`` / ``encode_text``
* ``load_vision(checkpoint, config=...)`` -> the vision tower alone
* ``tokenize(texts, bpe_path)`` -> LongTensor N×32
* ``get_config(name)`` -> the PE-Core configuration of that name
"""
from replication.checkpoint import load_clip, load_vision
from replication.config import get_config
from replication.tokenizer import tokenize

__all__ = ["load_clip", "load_vision", "tokenize", "get_config"]
