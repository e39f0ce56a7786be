"""Multi-task losses (thesis §3.7): masked cross-entropy and the two task-loss weightings.

* ``masked_cross_entropy``: §3.7.1 mean cross-entropy over the samples that have the task's label.
* ``UncertaintyWeighting``: §3.7.3 learned homoscedastic uncertainty, sum_k e^{-s_k} L_k + s_k / 2.
* ``EMAWeighting``: §3.7.3 lambda_k = 1 / EMA of L_k, frozen for a whole epoch.
* ``SumWeighting``: plain sum, for single-task runs (§3.1: unweighted cross-entropy).

All weightings share one interface used by the engine: ``module(losses, present) -> total`` where
``losses`` maps task -> scalar loss tensor and ``present`` task -> 1.0/0.0, whether the (global) batch
holds any label of the task; ``observe(losses, present)`` after each optimiser step;
``start_epoch()`` at the beginning of every epoch; ``log()`` -> the values written to metrics.jsonl
(Fig 4.1 is drawn from them). State lives in parameters/buffers so ``state_dict`` resumes it.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from replication.labels import MISSING


def masked_cross_entropy(logits: torch.Tensor, target: torch.Tensor,
                         labelled: torch.Tensor | None = None) -> torch.Tensor:
    """§3.7.1: L_t = sum_i 1(y_i != -1) CE(f_t(x_i), y_i) / sum_i 1(y_i != -1).

    ``labelled`` is the denominator when it is not this batch's own count: under DDP the engine passes
    the labelled count of the *global* batch, so that the loss is the global batch's masked mean (a rank
    holding one emotion label must not weigh as much as one holding twenty). A batch without any label
    for the task gives an exact 0 that is still connected to ``logits`` (zero gradient, no 0/0), so every
    parameter takes part in backward, as DDP requires; no branch on the count, so no host sync per step.
    Computed in float32 even under autocast: the reduction should not run in half precision."""
    if labelled is None:
        labelled = (target != MISSING).sum()
    total = F.cross_entropy(logits.float(), target, ignore_index=MISSING, reduction="sum")
    return total / labelled.clamp_min(1)


class SumWeighting(nn.Module):
    """Unweighted sum of the task losses (single-task runs have one term)."""

    def __init__(self, tasks: Sequence[str]):
        super().__init__()
        self.tasks = tuple(tasks)

    def forward(self, losses: Mapping[str, torch.Tensor], present: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return sum(losses[t] for t in self.tasks)

    def observe(self, losses: Mapping[str, float], present: Mapping[str, bool]) -> None:
        pass

    def start_epoch(self) -> None:
        pass

    def log(self) -> dict:
        return {"task_weights": {t: 1.0 for t in self.tasks}}


class UncertaintyWeighting(nn.Module):
    """§3.7.3 uncertainty weighting: L = sum_k e^{-s_k} L_k + s_k / 2 with s_k = log sigma_k^2.

    One learnable s_k per task, initialised to 0 (sigma^2 = 1, all weights 1). The engine trains it with
    the heads' learning rate and no weight decay: decay would pull every s_k towards 0, i.e. towards
    equal weights, biasing the very weighting the method is meant to learn."""

    def __init__(self, tasks: Sequence[str]):
        super().__init__()
        self.tasks = tuple(tasks)
        self.log_vars = nn.Parameter(torch.zeros(len(self.tasks)))

    def forward(self, losses: Mapping[str, torch.Tensor], present: Mapping[str, torch.Tensor]) -> torch.Tensor:
        s = self.log_vars.float()
        # a task with no label in the batch contributes nothing, its s_k / 2 regulariser included: alone,
        # that term would push s_k down (and the task's weight up) on a batch that says nothing about it
        return sum((torch.exp(-s[i]) * losses[t] + 0.5 * s[i]) * present[t] for i, t in enumerate(self.tasks))

    def observe(self, losses: Mapping[str, float], present: Mapping[str, bool]) -> None:
        pass

    def start_epoch(self) -> None:
        pass

    def log(self) -> dict:
        s = self.log_vars.detach().double()
        return {"task_weights": {t: float(torch.exp(-s[i])) for i, t in enumerate(self.tasks)},
                "log_variances": {t: float(s[i]) for i, t in enumerate(self.tasks)}}


class EMAWeighting(nn.Module):
    """§3.7.3 EMA loss weighting: lambda_k = 1 / L~_k, L~ an exponential moving average of the batch losses.

    Decisions (the thesis leaves them open):
    * The average is L~(t) = beta L~(t-1) + (1 - beta) L(t) with beta = 0.95. The printed formula puts
      beta on the *new* loss, which with beta = 0.95 would make L~ almost the last batch's loss; the text
      wants beta for "a stable calculation", i.e. on the history, as in the usual EMA.
    * L~ starts at the first observed loss of each task (no bias towards the initial value 0).
    * A batch without labels for a task is not an observation of that task's loss and is skipped.
    * Weights are frozen for a whole epoch from the EMA at the end of the previous epoch; in the first
      epoch, with no EMA yet, all weights are 1 (the plain sum)."""

    def __init__(self, tasks: Sequence[str], beta: float = 0.95):
        super().__init__()
        self.tasks = tuple(tasks)
        self.beta = beta
        self.register_buffer("ema", torch.zeros(len(self.tasks), dtype=torch.float64))
        self.register_buffer("seen", torch.zeros(len(self.tasks), dtype=torch.bool))
        self.register_buffer("weights", torch.ones(len(self.tasks), dtype=torch.float64))

    def forward(self, losses: Mapping[str, torch.Tensor], present: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return sum(float(self.weights[i]) * losses[t] for i, t in enumerate(self.tasks))

    @torch.no_grad()
    def observe(self, losses: Mapping[str, float], present: Mapping[str, bool]) -> None:
        for i, t in enumerate(self.tasks):
            if not present[t]:
                continue
            value = float(losses[t])
            self.ema[i] = self.beta * self.ema[i] + (1 - self.beta) * value if self.seen[i] else value
            self.seen[i] = True

    @torch.no_grad()
    def start_epoch(self) -> None:
        """Freeze lambda_k = 1 / L~_k for the coming epoch (tasks never observed keep their weight)."""
        self.weights.copy_(torch.where(self.seen, 1.0 / self.ema.clamp_min(1e-12), self.weights))

    def log(self) -> dict:
        return {"task_weights": {t: float(self.weights[i]) for i, t in enumerate(self.tasks)},
                "ema_losses": {t: float(self.ema[i]) for i, t in enumerate(self.tasks)}}


WEIGHTINGS = {"none": SumWeighting, "uw": UncertaintyWeighting, "ema": EMAWeighting}


def make_weighting(kind: str, tasks: Sequence[str]) -> nn.Module:
    """The §3.7.3 loss combination named ``kind`` ("none" | "uw" | "ema") for ``tasks``."""
    if kind not in WEIGHTINGS:
        raise ValueError(f"unknown loss weighting {kind!r}; expected one of {sorted(WEIGHTINGS)}")
    return WEIGHTINGS[kind](tasks)
