"""DDP on CPU: the `train` command under torchrun with 2 Gloo processes keeps both ranks identical, and the
gradient of a batch split over 2 ranks is the gradient of the whole batch on one process."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from torch import nn

from replication.engine import Objective
from replication.losses import make_weighting

sys.path.insert(0, str(Path(__file__).parent))
from engine_helpers import write_prepared  # noqa: E402

REPO = Path(__file__).resolve().parent.parent

# Each rank prints every thread's Python stack and exits if it is still running after 240 s, before the test's
# 300 s timeout: a rank left waiting in a collective (seen once, under torch 2.11 with the cores shared) then fails
# the test with where each rank waited, not with a bare timeout.
_HANG_REPORT = "import faulthandler; faulthandler.dump_traceback_later(240, exit=True)"

_WRAPPER = _HANG_REPORT + """
import sys, torch
sys.path.insert(0, {tests!r})
from replication import engine, runs
real_fit = engine.Trainer.fit
def fit(self):
    real_fit(self)
    state = {{"model": self.model.trainable_state_dict(), "weighting": self.weighting.state_dict(),
              "draws": self.sampler.draws()[0]}}
    torch.save(state, {out!r} + f"/rank{{self.d.rank}}.pt")
engine.Trainer.fit = fit
sys.exit(runs.cli(sys.argv[1:]))
"""


def test_two_gloo_ranks_hold_identical_weights(tmp_path):
    prepared = write_prepared(tmp_path / "prepared")
    script = tmp_path / "train.py"
    script.write_text(_WRAPPER.format(tests=str(Path(__file__).parent), out=str(tmp_path)))
    args = ["--method", "mtlora", "--tasks", "age,gender,emotion", "--weighting", "uw", "--prepared", str(prepared),
            "--runs-dir", str(tmp_path / "runs"), "--batch-size", "8", "--max-epochs", "2", "--lr-head", "0.01",
            "--lr-backbone", "0.01", "--device", "cpu", "--amp", "none", "--num-workers", "0", "--seed", "1",
            "--checkpoint", ""]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          str(script), *args], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-8000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    # the ranks trained on different shards of each batch...
    assert not torch.equal(r0["draws"], r1["draws"])
    # ...yet hold the same weights, UW log-variances included, and moved away from the start
    for key in ("model", "weighting"):
        assert r0[key].keys() == r1[key].keys()
        for k in r0[key]:
            torch.testing.assert_close(r0[key][k], r1[key][k], rtol=0, atol=0)
    assert r0["weighting"]["log_vars"].abs().sum() > 0
    # rank 0 wrote one complete run folder
    (run,) = (tmp_path / "runs").iterdir()
    assert (run / "DONE").exists() and len((run / "metrics.jsonl").read_text().splitlines()) == 2


# 8 rows (age, gender, emotion) split over 2 ranks: rank 0 holds rows 0-3 (4 age labels, no emotion label),
# rank 1 rows 4-7 (2 age and 3 emotion labels); no row has a gender label
_LABELS = [[3, -1, -1], [0, -1, -1], [8, -1, -1], [5, -1, -1], [1, -1, 6], [-1, -1, 2], [4, -1, 0], [-1, -1, 3]]
_SPLIT = _HANG_REPORT + """
import sys, torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from replication import distributed
sys.path.insert(0, {tests!r})
from test_ddp import _objective, _batch
d = distributed.setup("cpu")
objective = DistributedDataParallel(_objective(d))
x, y = _batch()
rows = slice(4 * d.rank, 4 * d.rank + 4)
total, _ = objective(x[rows], y[rows])
total.backward()
if d.rank == 0:
    torch.save({{n: p.grad for n, p in objective.module.named_parameters()}}, {out!r})
distributed.barrier(d)  # no rank leaves the group while another still works in it
distributed.teardown(d)
"""


class _Heads(nn.Module):
    def __init__(self):
        super().__init__()
        self.heads = nn.ModuleDict({"age": nn.Linear(5, 9), "gender": nn.Linear(5, 2), "emotion": nn.Linear(5, 7)})

    def forward(self, x):
        return {t: head(x) for t, head in self.heads.items()}


def _objective(d=None):
    torch.manual_seed(0)
    extra = {} if d is None else {"dist": d}
    return Objective(_Heads(), make_weighting("uw", ("age", "gender", "emotion")), cached=False, **extra)


def _batch():
    return torch.randn(8, 5, generator=torch.Generator().manual_seed(1)), torch.tensor(_LABELS)


def test_a_batch_split_over_two_ranks_has_the_whole_batchs_gradient(tmp_path):
    """§3.7.1's masked mean is over the global batch: each rank divides by the labelled count of all ranks
    (DDP then averages), so a rank with 2 age labels does not weigh as much as one with 4, and emotion,
    absent on one rank, is still present in the global batch for uncertainty weighting; gender, absent
    everywhere, leaves its s untouched."""
    script = tmp_path / "split.py"
    script.write_text(_SPLIT.format(tests=str(Path(__file__).parent), out=str(tmp_path / "grads.pt")))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-8000:]
    split = torch.load(tmp_path / "grads.pt")
    whole = _objective()
    x, y = _batch()
    total, _ = whole(x, y)
    total.backward()
    for name, p in whole.named_parameters():
        torch.testing.assert_close(split[name], p.grad, rtol=1e-5, atol=1e-7)
    s_grad = split["weighting.log_vars"]
    assert s_grad[0] != 0 and s_grad[1] == 0 and s_grad[2] != 0


def test_the_helpers_average_and_gather_over_the_ranks(monkeypatch):
    """all_reduce_mean divides torch's sum over ranks by the world size (float64, back on the CPU); all_gather
    returns every rank's object in rank order. The collectives are replaced by what rank 1 of 2 would add."""
    from replication import distributed

    d = distributed.Dist(rank=0, world_size=2)
    monkeypatch.setattr(distributed.dist, "all_reduce", lambda t: t.add_(torch.tensor([3.0, 5.0], dtype=t.dtype)))
    mean = distributed.all_reduce_mean(d, torch.tensor([1.0, 2.0]))
    assert mean.dtype == torch.float64 and mean.tolist() == [2.0, 3.5]
    monkeypatch.setattr(distributed.dist, "all_gather_object",
                        lambda out, obj: out.__setitem__(slice(None), [obj, "b"]))
    assert distributed.all_gather(d, "a") == ["a", "b"]
    assert distributed.all_gather(distributed.Dist(), "a") == ["a"]
