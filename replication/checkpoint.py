"""Loading and saving PE-Core weights: Meta's official layout, timm's `vit_pe_core_*` and open_clip's `PE-Core-*`.

Meta's `PE-Core-*.pt` (Hugging Face `facebook/<name>`, file `<name>.pt`) holds the whole CLIP:
text keys at the top level, vision keys under `visual.`. A vision-only file has the vision keys without
prefix. Both may be wrapped in {"state_dict": ...} or {"weights": ...} and carry DDP's `module.` prefix.
Meta's loader (`load_ckpt`) only *prints* missing/unexpected keys; here any missing, unexpected or
mis-shaped key is an error that counts them and lists the first of each kind, so a wrong file or config never
loads half a model; a vision tower of another known config is named.

Renames bridge the layouts:
* our blocks hold the fused q|k|v projection as an nn.Linear `attn.in_proj` (so adapters can wrap it,
  as the thesis's code does in its `migrate_weights`), Meta's as raw `attn.in_proj_weight` / `attn.in_proj_bias`;
  the attention pooler's fused in_proj keeps Meta's raw names (no adapter wraps it; its out_proj and MLP are
  nn.Linear layers under Meta's names already);
* timm's Eva port renames most modules and splits the pooler's in_proj into `q` and `kv` (timm's `eva.py`);
* open_clip's `PE-Core-*` (Hugging Face `timm/PE-Core-*`, file `open_clip_model.safetensors`) is the whole
  CLIP: the timm tower under `visual.trunk.`, Meta's text keys under `text.`.
"""
from __future__ import annotations

import re
import zipfile
from pathlib import Path

import torch

from .config import CONFIGS, CLIPConfig, get_config
from .files import atomic_write
from .pe import CLIP, VisionTransformer


# Where the full profile's weights come from (the README's download table), for every message about a missing file
PE_CORE_WEIGHTS = "Hugging Face facebook/PE-Core-L14-336, file PE-Core-L14-336.pt"


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not match the model: names the file, or every offending key."""


# --- Meta layout <-> this model ------------------------------------------------------------------------
# Only the transformer blocks' attention is renamed; `attn_pool.attn.in_proj_weight` stays as it is.
_META_BLOCK_QKV = re.compile(r"^(.*transformer\.resblocks\.\d+\.attn)\.in_proj_(weight|bias)$")
_OUR_BLOCK_QKV = re.compile(r"^(.*transformer\.resblocks\.\d+\.attn)\.in_proj\.(weight|bias)$")


def from_meta_layout(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Meta key names -> this model's (`...attn.in_proj_weight` -> `...attn.in_proj.weight`)."""
    return {_META_BLOCK_QKV.sub(r"\1.in_proj.\2", k): v for k, v in sd.items()}


def meta_key(key: str) -> str:
    """This model's name of a key -> Meta's."""
    return _OUR_BLOCK_QKV.sub(r"\1.in_proj_\2", key)


def to_meta_layout(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """This model's key names -> Meta's (inverse of from_meta_layout)."""
    return {meta_key(k): v for k, v in sd.items()}


# --- timm layout -> Meta layout --------------------------------------------------------------------------
# timm's `_convert_pe` renames modules by substring swaps; these tables undo them exactly.
_TIMM_BLOCK = re.compile(r"^blocks\.(\d+)\.(norm1|norm2|attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)\.(weight|bias)$")
_TIMM_BLOCK_NAMES = {"norm1": "ln_1", "norm2": "ln_2", "attn.qkv": "attn.in_proj", "attn.proj": "attn.out_proj",
                     "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}
_TIMM_TOP = {
    "patch_embed.proj.weight": "conv1.weight",
    "norm_pre.weight": "ln_pre.weight", "norm_pre.bias": "ln_pre.bias",
    "norm.weight": "ln_post.weight", "norm.bias": "ln_post.bias",
    "attn_pool.proj.weight": "attn_pool.attn.out_proj.weight",
    "attn_pool.proj.bias": "attn_pool.attn.out_proj.bias",
    "attn_pool.norm.weight": "attn_pool.layernorm.weight", "attn_pool.norm.bias": "attn_pool.layernorm.bias",
    "attn_pool.mlp.fc1.weight": "attn_pool.mlp.c_fc.weight", "attn_pool.mlp.fc1.bias": "attn_pool.mlp.c_fc.bias",
    "attn_pool.mlp.fc2.weight": "attn_pool.mlp.c_proj.weight", "attn_pool.mlp.fc2.bias": "attn_pool.mlp.c_proj.bias",
}


def is_timm_layout(sd: dict) -> bool:
    return "patch_embed.proj.weight" in sd


def timm_to_meta(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm `vit_pe_core_*` (Eva) vision state dict -> Meta's vision-only layout.

    cls_token (1,1,w) -> class_embedding (w,); pos_embed (1,N,w) -> (N,w); attn_pool.latent -> probe;
    attn_pool.q + attn_pool.kv -> the fused in_proj; head.weight (out,in) -> proj (in,out), transposed.
    PE has no bias after `proj`: timm's head.bias is all zeros in a converted checkpoint; a non-zero one
    (a re-trained head) cannot be represented and is an error. Unknown keys are kept, so the strict
    load reports them.
    """
    out, rest = {}, dict(sd)
    # timm's fixed RoPE tables (if a version saved them) are recomputed here, as timm itself skips them.
    for k in [k for k in rest if k.startswith("rope.")]:
        del rest[k]
    if "head.bias" in rest:
        bias = rest.pop("head.bias")
        if torch.count_nonzero(bias):
            raise CheckpointError("timm checkpoint has a non-zero head.bias; PE-Core's `proj` has no bias, "
                                  "so this is not a converted PE-Core checkpoint (or its head was re-trained)")
    if "head.weight" in rest:
        out["proj"] = rest.pop("head.weight").t()
    if "cls_token" in rest:
        out["class_embedding"] = rest.pop("cls_token").reshape(-1)
    if "pos_embed" in rest:
        out["positional_embedding"] = rest.pop("pos_embed").squeeze(0)
    if "attn_pool.latent" in rest:
        out["attn_pool.probe"] = rest.pop("attn_pool.latent")
    for part in ("weight", "bias"):
        q, kv = f"attn_pool.q.{part}", f"attn_pool.kv.{part}"
        if q in rest and kv in rest:
            out[f"attn_pool.attn.in_proj_{part}"] = torch.cat([rest.pop(q), rest.pop(kv)], dim=0)
    for k, v in rest.items():
        m = _TIMM_BLOCK.match(k)
        if m:
            i, name, part = m.groups()
            out[f"transformer.resblocks.{i}.{_TIMM_BLOCK_NAMES[name]}{'_' if name == 'attn.qkv' else '.'}{part}"] = v
        else:
            out[_TIMM_TOP.get(k, k)] = v
    return out


def is_open_clip_layout(sd: dict) -> bool:
    return any(k.startswith("visual.trunk.") for k in sd)


def open_clip_to_meta(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """open_clip `PE-Core-*` CLIP state dict -> Meta's full-CLIP layout: the `visual.trunk.` tower through
    timm_to_meta, then under `visual.`; `text.` stripped (open_clip's text tower has Meta's key names).
    `logit_scale` and unknown keys are kept as they are, so the strict load reports the unknown ones."""
    trunk = {k.removeprefix("visual.trunk."): v for k, v in sd.items() if k.startswith("visual.trunk.")}
    rest = {k.removeprefix("text."): v for k, v in sd.items() if not k.startswith("visual.trunk.")}
    return rest | {f"visual.{k}": v for k, v in timm_to_meta(trunk).items()}


# --- reading a file --------------------------------------------------------------------------------------
def _read_safetensors(path: Path, header_only: bool):
    try:
        import safetensors
        import safetensors.torch
    except ImportError:
        raise CheckpointError(f"{path}: reading .safetensors needs `pip install safetensors`") from None
    if header_only:
        with safetensors.safe_open(str(path), framework="pt"):  # reads the header, which covers the file's length
            return None
    return safetensors.torch.load_file(str(path))


def _load_file(path: Path, header_only: bool = False):
    """The file's tensors (torch.load(weights_only=True), or safetensors for `.safetensors`), with one error
    for every way the file can be unreadable. `header_only` reads what proves the file whole, not its tensors:
    a zip torch.save file (the format since torch 1.6) is memory-mapped, so only its directory and pickled
    key list are read, while an older single-stream file is loaded whole; a safetensors header is read.

    torch's own messages do not name the file and mislead: a Git LFS pointer or an HTML page fails the
    weights-only unpickler, whose message advises weights_only=False (running the file's code); a
    truncated download fails in miniz ("failed finding central directory"); junk can give a bare KeyError.
    safetensors says "Error while deserializing header: header too large" for a pointer, page or junk.
    """
    is_safetensors = path.suffix == ".safetensors"
    try:
        if is_safetensors:
            return _read_safetensors(path, header_only)
        return torch.load(path, map_location="cpu", weights_only=True, mmap=header_only and zipfile.is_zipfile(path))
    except (OSError, CheckpointError):
        raise  # missing or unreadable by permissions (the OS's message names the file); no safetensors package
    except Exception as err:
        # the reader's message is left out on purpose (see above); its type says which reader gave up
        kind, reader = ("safetensors file", "safetensors") if is_safetensors else ("PyTorch checkpoint", "torch.load")
        raise CheckpointError(
            f"{path} ({path.stat().st_size:,} bytes) is not a readable {kind} "
            f"({reader} raised {type(err).__name__}). Likely a truncated or interrupted download, a Git LFS "
            f"pointer (a ~130-byte text file) or an HTML page (a login or error page) saved instead of the "
            f"file: download it again. PE-Core weights: {PE_CORE_WEIGHTS} (about 2.5 GiB)."
            + ("" if is_safetensors else " A file holding pickled objects other than tensors is refused too.")
        ) from None


def check_readable(path: str | Path) -> None:
    """Raise CheckpointError if the checkpoint `path` cannot be loaded, without reading its tensors."""
    _load_file(Path(path), header_only=True)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a checkpoint file -> flat state dict in Meta's layout (wrappers and `module.` removed,
    timm and open_clip layouts converted). `.safetensors` (timm's and open_clip's files on Hugging Face)
    needs the `safetensors` package."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path} (PE-Core weights: {PE_CORE_WEIGHTS})")
    obj = _load_file(path)
    for wrapper in ("state_dict", "weights"):  # what Meta's load_ckpt unwraps
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a state dict of tensors (optionally under 'state_dict' or "
                              f"'weights'), got {type(obj).__name__}")
    sd = {k.removeprefix("module."): v for k, v in obj.items()}
    if is_open_clip_layout(sd):
        return open_clip_to_meta(sd)
    return timm_to_meta(sd) if is_timm_layout(sd) else sd


LISTED_KEYS = 10  # per kind of mismatch: another config's checkpoint would list hundreds


def _configs_like(sd: dict[str, torch.Tensor]) -> list[str]:
    """The known configs whose vision tower has the checkpoint's number of blocks and width."""
    vision = "visual." if "visual.conv1.weight" in sd else ""  # a CLIP's text blocks are `transformer.` too
    conv = sd.get(vision + "conv1.weight")
    block = re.compile(rf"^{re.escape(vision)}transformer\.resblocks\.(\d+)\.")
    blocks = {int(m.group(1)) for m in map(block.match, sd) if m}
    if conv is None or not blocks:
        return []
    shape = (max(blocks) + 1, conv.shape[0])
    return [name for name, c in CONFIGS.items() if (c.vision.layers, c.vision.width) == shape]


def _load_strict(model: torch.nn.Module, sd: dict[str, torch.Tensor], source: str) -> None:
    """load_state_dict with one error counting the missing, unexpected and mis-shaped keys and listing the first
    LISTED_KEYS of each (named as in Meta's layout, i.e. as in the file).

    The model is built on the meta device; `assign=True` adopts the checkpoint's tensors (no second copy
    of a 2.5 GB model), converted to float32 as Meta's fp32 model would hold them.
    """
    own = model.state_dict()
    missing = [meta_key(k) for k in own if k not in sd]
    unexpected = [meta_key(k) for k in sd if k not in own]
    misshaped = [f"{meta_key(k)}: checkpoint {tuple(sd[k].shape)}, model {tuple(own[k].shape)}"
                 for k in own if k in sd and sd[k].shape != own[k].shape]
    if missing or unexpected or misshaped:
        lines = [f"checkpoint {source} does not match the model:"]
        for title, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", misshaped)):
            if keys:
                lines += [f"  {title} ({len(keys)}):"] + [f"    {k}" for k in keys[:LISTED_KEYS]]
                lines += [f"    ... and {len(keys) - LISTED_KEYS} more"] if len(keys) > LISTED_KEYS else []
        if isinstance(model, CLIP) and not any(k.startswith("visual.") for k in sd):
            lines.append("  (no `visual.*` keys: this is a vision-only checkpoint; use load_vision)")
        like = _configs_like(sd)
        if like and like != _configs_like(own):  # the same tower: some other mismatch, not another config
            lines.append(f"  (its vision tower is that of {' or '.join(like)}: a checkpoint of that config?)")
        raise CheckpointError("\n".join(lines))
    model.load_state_dict({k: v.float().contiguous() for k, v in sd.items()}, strict=True, assign=True)


# --- public API ------------------------------------------------------------------------------------------
def load_clip(checkpoint: str | Path | None = None, config: str | CLIPConfig = "PE-Core-L14-336") -> CLIP:
    """A PE-Core CLIP of `config`, with weights from a full-CLIP checkpoint in Meta's or open_clip's layout
    (None: random initialisation, for the demo, tests and benchmarks). Returned in eval mode, fp32, CPU."""
    cfg = get_config(config)
    if checkpoint is None:
        return CLIP(cfg).eval()
    with torch.device("meta"):
        model = CLIP(cfg)
    _load_strict(model, from_meta_layout(read_state_dict(checkpoint)), str(checkpoint))
    return model.eval()


def load_vision(checkpoint: str | Path | None = None,
                config: str | CLIPConfig = "PE-Core-L14-336") -> VisionTransformer:
    """The vision tower alone, from a full-CLIP (Meta's or open_clip's) or vision-only checkpoint (Meta's or timm's).

    As Meta's VisionTransformer.load_ckpt: of a full-CLIP file only the `visual.*` keys are used (the
    text tower is not needed); the vision keys are then checked strictly.
    """
    cfg = get_config(config)
    if checkpoint is None:
        return VisionTransformer(cfg.vision).eval()
    sd = read_state_dict(checkpoint)
    if any(k.startswith("visual.") for k in sd):
        sd = {k.removeprefix("visual."): v for k, v in sd.items() if k.startswith("visual.")}
    with torch.device("meta"):
        model = VisionTransformer(cfg.vision)
    _load_strict(model, from_meta_layout(sd), str(checkpoint))
    return model.eval()


def save_clip_meta_layout(model: CLIP | VisionTransformer, path: str | Path) -> None:
    """Write `model`'s weights in Meta's key layout (a CLIP as a full file, a vision tower as a
    vision-only file), atomically. Adapter-wrapped models must be merged back into plain modules first."""
    sd = to_meta_layout({k: v.detach().cpu() for k, v in model.state_dict().items()})
    # Guard against saving a model whose keys Meta's layout (and hence load_clip) would not recognise.
    with torch.device("meta"):
        plain = CLIP(model.cfg) if isinstance(model, CLIP) else VisionTransformer(model.cfg)
    expected = set(to_meta_layout(plain.state_dict()))
    if set(sd) != expected:
        extra, lacking = sorted(set(sd) - expected), sorted(expected - set(sd))
        raise CheckpointError(f"cannot save in Meta's layout: unexpected keys {extra[:10]}, missing keys {lacking[:10]} "
                              f"(merge adapters into the base model first)")
    atomic_write(path, lambda tmp: torch.save(sd, tmp))
