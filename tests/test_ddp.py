"""DDP on CPU: the `train` command under torchrun with 2 Gloo processes keeps both ranks identical."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from engine_helpers import write_prepared  # noqa: E402

REPO = Path(__file__).resolve().parent.parent

_WRAPPER = """
import sys, torch
sys.path.insert(0, {tests!r})
from replication import engine
real_fit = engine.Trainer.fit
def fit(self):
    real_fit(self)
    state = {{"model": self.model.trainable_state_dict(), "weighting": self.weighting.state_dict(),
              "draws": self.sampler.draws()[0]}}
    torch.save(state, {out!r} + f"/rank{{self.d.rank}}.pt")
engine.Trainer.fit = fit
sys.exit(engine.cli(sys.argv[1:]))
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
    assert out.returncode == 0, out.stderr[-3000:]
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
