"""A plain-PyTorch replication of "Adapting Vision Language Models via parameter-efficient
fine-tuning for Multitask Classification of Age, Gender, and Emotion".

Public API (stable, used by the notebooks and by outside code):

* ``load_clip(checkpoint, config="PE-Core-L14-336")`` -> CLIP with ``encode_image`` / ``encode_text``
* ``load_vision(checkpoint, config=...)`` -> the vision tower alone
* ``tokenize(texts, bpe_path)`` -> LongTensor N×32
* ``get_config(name)`` -> the PE-Core configuration of that name
"""
import importlib

# each public name and the module that defines it
_PUBLIC = {"load_clip": "replication.checkpoint", "load_vision": "replication.checkpoint",
           "tokenize": "replication.tokenizer", "get_config": "replication.config"}

__all__ = list(_PUBLIC)


def __getattr__(name: str):
    """The public names are imported on first use (PEP 562): `python3 -m replication` imports this package before
    its entry point runs, and importing torch here took a second or two that Ctrl-C turned into a traceback."""
    if name not in _PUBLIC:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_PUBLIC[name]), name)


def __dir__() -> list[str]:
    """The public names too, before their first use (help(), tab completion)."""
    return sorted({*globals(), *_PUBLIC})
