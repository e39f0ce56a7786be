"""Class-balanced sampling (thesis §3.2, Table 3.2) and emotion replication (§3.7.2).

§3.2: "we first compute a weight for each class using the inverse frequency method. Then, for each
image, we determine its final sampling weight by averaging the pre-calculated weights of its available
age, emotion, and gender labels", fed to ``WeightedRandomSampler`` (with replacement, one epoch = as
many draws as training samples).

Which inverse frequency: the class weight of class c of task k is ``n_k / (C_k * n_kc)`` (n_k samples
labelled for task k, C_k classes, n_kc samples of class c; scikit-learn's "balanced" class weight).
The scale matters because weights of different tasks are averaged; this one is the scale that
reproduces the thesis's "Weighted %" columns of Table 3.2 from its "Samples" columns (e.g. age 0-2
2.15% -> 6.63%, emotion Fear 2.37% -> 8.44%), while ``1/n_kc`` would make emotion uniform (~14.3%)
and ``n_k/n_kc`` would give 0-2 9.5%. It also makes the mean class weight of every task exactly 1,
so the weighting barely changes how often each *task* is drawn.

§3.7.2 emotion replication (multi-task training only): the emotion-labelled samples are repeated
(whole copies) until they are about a third of the training set. Replication happens *before* the
weights are computed: the weights describe the set the sampler draws from. Emotion class weights are
unchanged by whole copies (the "balanced" weight is scale-invariant), and because each task's mean
weight is 1 the expected share of emotion-labelled samples among the draws stays about a third
(``expected_task_shares`` gives the exact value).
"""
from __future__ import annotations

import math
from fractions import Fraction
from typing import Iterator, Mapping

import numpy as np
import torch
from torch.utils.data import Sampler

from replication.labels import MISSING


def _checked_labels(labels: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``labels`` (task -> class ids, -1 missing) as numpy arrays, checked: 1-D integer arrays of one length, no id
    below -1 (each error names the task and what was expected)."""
    arrays = {task: np.asarray(y) for task, y in labels.items()}
    lengths = {task: y.shape for task, y in arrays.items()}
    if len(set(lengths.values())) != 1 or any(len(s) != 1 for s in lengths.values()):
        raise ValueError(f"labels must be 1-D arrays of equal length, got shapes {lengths}")
    for task, y in arrays.items():
        if not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"labels[{task!r}] must be integers (-1 = missing), got dtype {y.dtype}")
        if (y < MISSING).any():
            raise ValueError(f"labels[{task!r}] has values below -1 (-1 marks a missing label)")
    return arrays


def class_weights(y: np.ndarray) -> np.ndarray:
    """§3.2 inverse-frequency weight of each class seen in ``y``: n / (C * n_c), indexed by class id.

    C counts the classes present in the labelled samples; absent classes get weight 0 (never drawn)."""
    y = y[y != MISSING]
    counts = np.bincount(y).astype(np.float64)
    present = counts > 0
    weights = np.zeros_like(counts)
    weights[present] = len(y) / (present.sum() * counts[present])
    return weights


def class_balanced_weights(labels: Mapping[str, np.ndarray]) -> np.ndarray:
    """§3.2 per-sample sampling weight: the mean of the class weights of the labels the sample has.

    ``labels`` maps task -> int array (-1 = missing), all the same length. Samples without any label
    get weight 0 (they carry no training signal)."""
    arrays = _checked_labels(labels)
    n = len(next(iter(arrays.values())))
    total = np.zeros(n, dtype=np.float64)
    count = np.zeros(n, dtype=np.float64)
    for y in arrays.values():
        has = y != MISSING
        if has.any():
            total[has] += class_weights(y)[y[has]]
            count[has] += 1
    weights = np.zeros(n, dtype=np.float64)
    np.divide(total, count, out=weights, where=count > 0)
    return weights


def expected_class_shares(weights: np.ndarray, labels: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Exact expected share of each class among the drawn samples that carry the task's label.

    A draw with replacement picks sample i with probability w_i / sum(w), so the expected number of
    class-c draws is proportional to the weight mass of class c; dividing by the mass of all labelled
    samples of the task gives Table 3.2's "Weighted %" (the thesis estimated it by Monte Carlo)."""
    weights = np.asarray(weights, dtype=np.float64)
    shares = {}
    for task, y in _checked_labels(labels).items():
        has = y != MISSING
        mass = np.bincount(y[has], weights=weights[has])
        shares[task] = mass / mass.sum() if mass.sum() > 0 else mass
    return shares


def expected_task_shares(weights: np.ndarray, labels: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Expected fraction of drawn samples that carry each task's label (§3.7.2: emotion ~ 1/3)."""
    weights = np.asarray(weights, dtype=np.float64)
    return {task: float(weights[y != MISSING].sum() / weights.sum()) for task, y in _checked_labels(labels).items()}


def emotion_replication_factor(has_emotion: np.ndarray, share: float = 1 / 3) -> int:
    """§3.7.2 number of copies of each emotion-labelled sample so they make up ~``share`` of the set.

    Whole copies, so every emotion sample appears equally often and the emotion class ratios are kept
    exactly. k * n_e / (k * n_e + n_other) = share has a fractional solution; of the two whole numbers
    around it (at least 1) the one whose share is nearer ``share`` is taken ("until they become a third",
    §3.7.2), in exact arithmetic: rounding the solution instead can take the farther one (16 emotion
    images among 64 solve to k = 1.5, and 2 copies give 40 %, nearer a third than 1 copy's 25 %)."""
    has_emotion = np.asarray(has_emotion, dtype=bool)
    n_e, n_other = int(has_emotion.sum()), int((~has_emotion).sum())
    if not 0 < share < 1:
        raise ValueError(f"emotion share must be in (0, 1), got {share}")
    if n_e == 0 or n_other == 0:
        return 1
    target = Fraction(share).limit_denominator(10**6)  # 1/3 given as a float is 1/3 again
    solution = target * n_other / ((1 - target) * n_e)
    candidates = {max(1, math.floor(solution)), max(1, math.ceil(solution))}
    return min(candidates, key=lambda k: (abs(Fraction(k * n_e, k * n_e + n_other) - target), k))


def replicate_emotion(has_emotion: np.ndarray, share: float = 1 / 3) -> np.ndarray:
    """Row indices of the training set after §3.7.2 replication (each emotion row repeated k times)."""
    has_emotion = np.asarray(has_emotion, dtype=bool)
    copies = np.where(has_emotion, emotion_replication_factor(has_emotion, share), 1)
    return np.repeat(np.arange(len(has_emotion)), copies)


class BalancedSampler(Sampler):
    """Weighted sampling with replacement, deterministic per (seed, epoch), shardable over DDP ranks.

    Equivalent in distribution to ``WeightedRandomSampler(weights, len(weights))``. Every epoch draws
    the global sequence from a generator seeded with (seed, epoch); rank r of w takes draws r, r+w, ...
    (the sequence has w * ceil(n / w) draws, so every rank gets the same count). Each draw also comes
    with its own augmentation seed, so the images a run sees do not depend on worker processes, and
    ``set_epoch(epoch, start)`` can resume mid-epoch exactly (skipping the ``start`` draws this rank
    already consumed). Yields ``(index, augmentation_seed)`` pairs."""

    def __init__(self, weights: np.ndarray, seed: int, rank: int = 0, world_size: int = 1):
        self.weights = torch.as_tensor(np.asarray(weights, dtype=np.float64))
        if self.weights.ndim != 1 or not (self.weights >= 0).all() or self.weights.sum() <= 0:
            raise ValueError("sampling weights must be a 1-D non-negative array with a positive sum")
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.num_samples = math.ceil(len(self.weights) / world_size)  # draws per rank per epoch
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def draws(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's (indices, augmentation seeds) for the current epoch, from the beginning."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        total = self.num_samples * self.world_size
        indices = torch.multinomial(self.weights, total, replacement=True, generator=g)
        seeds = torch.randint(0, 2**62, (total,), generator=g)
        return indices[self.rank::self.world_size], seeds[self.rank::self.world_size]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        indices, seeds = self.draws()
        return iter(zip(indices[self.start:].tolist(), seeds[self.start:].tolist()))

    def __len__(self) -> int:
        return self.num_samples - self.start
