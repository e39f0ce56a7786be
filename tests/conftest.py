"""Test-session settings.

One intra-op thread for torch in this process and in every subprocess the tests start (papermill
kernels, torchrun ranks, killed-and-resumed runs): the models here are tiny, so extra threads only
contend for the CI machine's two cores.
"""
import os

os.environ["OMP_NUM_THREADS"] = "1"

import torch  # noqa: E402  (after the variable, so torch reads it)

torch.set_num_threads(1)

import pytest  # noqa: E402


@pytest.fixture
def replayed_blocks(monkeypatch):
    """The blocks `pe.Transformer` hands to activation checkpointing, in call order (the list is cleared
    by the test between steps)."""
    import replication.pe as pe

    calls, checkpoint = [], pe.checkpoint

    def spy(block, *args, **kwargs):
        calls.append(block)
        return checkpoint(block, *args, **kwargs)

    monkeypatch.setattr(pe, "checkpoint", spy)
    return calls
