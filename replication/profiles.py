"""The two profiles of one code path: ``demo`` (embedded default) and ``full`` (the thesis).

Both run the same readers, preparation, methods, engine and notebooks. They differ only in the
model configuration, where the data and weights come from, and how long training lasts:

* ``demo``: the tiny PE-Core-architecture model ``demo-tiny``, briefly pre-trained CLIP-style on
  generated faces (``replication.pretrain``), and the generated datasets (``replication.data.demo``)
  written in the six datasets' native formats. Runs on a 2-core CPU in minutes. It proves the
  pipeline, never the thesis's numbers, and every table and figure it produces says so.
* ``full``: PE-Core-L14-336 with Meta's official weights and the real datasets on a GPU, with the
  thesis's training settings: batch 128 (§3.7.2), early stopping after 10 epochs and fp16 AMP with
  GradScaler (§3.1); at most 100 epochs, a cap of ours (the thesis gives none).
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType

REPO = Path(__file__).resolve().parent.parent

# The profile settings a training run takes over, under the same names in engine.TrainConfig and
# reproduce.Settings (the `train` command and the notebooks both start from them).
RUN_FIELDS = ("model_config", "prepared", "runs_dir", "checkpoint", "bpe", "batch_size", "max_epochs",
              "patience", "lr_head", "lr_backbone", "amp", "device", "num_workers")

DEMO_LABEL = "demo profile — not the thesis's data or model"


def label(profile: str) -> str:
    """Text that every table and figure of ``profile`` must carry: the demo proves the pipeline, never the
    thesis's numbers (empty for `full`)."""
    return DEMO_LABEL if profile == "demo" else ""


@dataclass(frozen=True)
class Profile:
    name: str
    model_config: str          # key of replication.config.CONFIGS
    raw_data: Path | None      # native-format datasets (input of `prepare`)
    prepared: Path             # face crops + manifest.csv (output of `prepare`)
    runs_dir: Path             # one folder per training run
    checkpoint: Path | None    # PE-Core .pt in Meta's layout
    bpe: Path | None           # CLIP BPE merges file
    detector_dir: Path | None  # OpenCV res10 SSD files (None: datasets' boxes / no detection)
    detector: str              # prepare --detector: ssd | boxes | none
    image_size: int            # crop size written by `prepare`
    batch_size: int
    max_epochs: int
    patience: int              # §3.1 early stopping
    lr_head: float             # heads, attention pooling and its adapters (§3.3–3.6)
    lr_backbone: float         # backbone blocks / backbone adapters' A (LoRA+: B gets 6x, §3.6)
    amp: str                   # bf16 | fp16 | none
    device: str
    num_workers: int
    checkpoint_blocks: Mapping[str, int]  # method -> first blocks activation-checkpointed (absent: none); read-only
    executed_notebooks: Path   # where `reproduce` writes executed notebooks

    @property
    def label(self) -> str:
        return label(self.name)

    def run_settings(self) -> dict:
        """{field: value} of RUN_FIELDS (folders and files as Paths)."""
        return {f: getattr(self, f) for f in RUN_FIELDS}

    def with_paths(self, **paths) -> "Profile":
        """A copy with some folders/files replaced (strings are turned into Paths)."""
        return replace(self, **{k: (Path(v) if v is not None else None) for k, v in paths.items()})


_DEMO_ROOT = REPO / "data" / "demo"

PROFILES = {
    "demo": Profile(
        name="demo",
        model_config="demo-tiny",
        raw_data=_DEMO_ROOT / "raw",
        prepared=_DEMO_ROOT / "prepared",
        runs_dir=REPO / "runs" / "demo",
        checkpoint=_DEMO_ROOT / "PE-Core-demo-tiny.pt",
        bpe=_DEMO_ROOT / "bpe_demo.txt.gz",
        detector_dir=None,
        detector="boxes",
        image_size=64,
        batch_size=64,
        max_epochs=4,
        patience=10,
        # The thesis's rates (1e-4 / 1e-5) are for runs over 168k faces that early stopping ends; the demo's
        # few short epochs over 1,560 generated training faces need them 30x larger (same ratio between groups).
        lr_head=3e-3,
        lr_backbone=3e-4,
        amp="none",
        device="cpu",
        num_workers=0,
        checkpoint_blocks=MappingProxyType({}),  # demo-tiny keeps ~2 MB of activations per image (bench.SavedTensors)
        executed_notebooks=REPO / "notebooks" / "executed" / "demo",
    ),
    "full": Profile(
        name="full",
        model_config="PE-Core-L14-336",
        raw_data=None,
        prepared=REPO / "data" / "full" / "prepared",
        runs_dir=REPO / "runs" / "full",
        checkpoint=None,
        bpe=None,
        detector_dir=None,
        detector="ssd",
        image_size=336,
        batch_size=128,
        max_epochs=100,
        patience=10,
        lr_head=1e-4,
        lr_backbone=1e-5,
        # §3.1 "AMP training with Autocast and GradScaler": a GradScaler is what fp16 needs (bf16 has fp32's
        # exponent range and none), and the thesis's code autocasts to float16
        amp="fp16",
        device="cuda",
        num_workers=8,
        # At batch 128 the activations LoRA, DoRA and MTLoRA keep for backward through all 24 blocks do not
        # fit the thesis's 48 GB card (nor an 80 GB one). A checkpointed block keeps only its input and runs
        # its forward again in backward, so each method checkpoints the fewest first blocks that fit:
        # `bench --plan-checkpointing` on the L14-336 activation counts (benchmarks/results/cpu-counts/
        # checkpointing-plan-l40s.json, tested to match; README, Performance).
        checkpoint_blocks=MappingProxyType({"lora": 18, "dora": 19, "mtlora": 21}),
        executed_notebooks=REPO / "notebooks" / "executed" / "full",
    ),
}


def demo_inputs_help(prepared=None, checkpoint=None, bpe=None, *, written: tuple[str, ...] = ()) -> str:
    """How to make what is missing of the demo's inputs (datasets, face crops, encoder and merges), for the errors
    of the commands that need them: the steps `reproduce --profile demo` takes before its notebooks, each only if
    its output is missing (reproduce.ready_demo), writing to the folders and files the failed command was given
    (None: the demo's own). ``written``: the flags whose files the failed command itself writes (pretrain's
    --checkpoint and --bpe), which are not asked about as typos."""
    d = PROFILES["demo"]
    given = {"--prepared": prepared, "--checkpoint": checkpoint, "--bpe": bpe}
    own = {"--prepared": d.prepared, "--checkpoint": d.checkpoint, "--bpe": d.bpe}
    other = {flag: Path(os.path.abspath(path)) for flag, path in given.items()
             if path not in (None, "") and Path(os.path.abspath(path)) != own[flag]}
    path = own | other
    steps = []
    if not (path["--prepared"] / "manifest.csv").exists():
        if not d.raw_data.exists():  # demo-data refuses a folder that holds files: the data is there
            steps.append(f"python3 -m replication demo-data --out {d.raw_data}")
        steps.append(f"python3 -m replication prepare --data-root {d.raw_data} --out {path['--prepared']} "
                     f"--detector {d.detector} --size {d.image_size}")
    if not (path["--checkpoint"].is_file() and path["--bpe"].is_file()):
        steps.append(" ".join(["python3 -m replication pretrain"] + [f"{flag} {p}" for flag, p in other.items()]))
        if path["--checkpoint"].is_file():  # pretrain keeps a checkpoint, and writes the merges with a new one
            steps[-1] = f"rm {path['--checkpoint']} && {steps[-1]}  # its merges file is written with the encoder"
    intro = ("`python3 -m replication reproduce --profile demo` makes the demo's data and encoder (then runs the "
             "notebooks); step by step, in the demo's folders:" if not other else
             "Make the demo's data and encoder in the folders given:")
    # a path given that does not exist where the demo's own does is more likely a typo than a wish for new data
    typos = [f"{p} does not exist, but the demo's {own[flag]} does: did you mean {flag} {own[flag]}?"
             for flag, p in other.items() if flag not in written and not p.exists() and own[flag].exists()]
    return "\n".join(typos + ["\n  ".join([intro] + steps)])


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise KeyError(f"unknown profile {name!r}; expected one of {sorted(PROFILES)}") from None
