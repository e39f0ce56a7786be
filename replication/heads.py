"""Classification heads (thesis §3.3–3.4).

§3.3 compares a "simple head" (Dropout -> Linear(d, C)) with a "deeper head"
(Dropout -> Linear(d, d) -> GELU -> Linear(d, C)) and keeps the deeper one for every method.
§3.4: from attention probing on, "we add a batch normalization layer immediately before the
classification head". In the thesis's code the BatchNorm1d is the head's first layer:
    [BatchNorm1d(d)] -> Dropout(0.5) -> Linear(d, d) -> GELU -> Linear(d, C)
so linear probing (LP) heads have no BatchNorm and every other method's heads do.

Parameter count of one deeper head on d = 1024: 1024*1024 + 1024 + 1024*C + C (+ 2*1024 for BN's
affine weight and bias; its running statistics are buffers, not parameters). With C = 9 (age) this is
1,058,825 without BN (the §3.3 LP figure) and 1,060,873 with BN (part of the §3.4 AP figure).
"""
from __future__ import annotations

from collections.abc import Mapping

from torch import nn

from .labels import NUM_CLASSES


class DeepHead(nn.Sequential):
    """[BatchNorm1d] -> Dropout -> Linear(d, d) -> GELU -> Linear(d, C) (the thesis's "deeper head")."""

    def __init__(self, dim: int, num_classes: int, *, use_bn: bool, dropout: float = 0.5):
        layers = [nn.BatchNorm1d(dim)] if use_bn else []
        layers += [nn.Dropout(dropout), nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, num_classes)]
        super().__init__(*layers)
        self.dim, self.num_classes, self.use_bn = dim, num_classes, use_bn


def make_heads(tasks, dim: int, *, use_bn: bool, dropout: float = 0.5,
               num_classes: Mapping[str, int] = NUM_CLASSES) -> nn.ModuleDict:
    """One DeepHead per task (age 9 classes, gender 2, emotion 7 by default)."""
    unknown = [t for t in tasks if t not in num_classes]
    if unknown:
        raise KeyError(f"unknown task(s) {unknown}; expected some of {sorted(num_classes)}")
    return nn.ModuleDict({t: DeepHead(dim, num_classes[t], use_bn=use_bn, dropout=dropout) for t in tasks})
