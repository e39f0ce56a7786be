"""Model configurations of the Perception Encoder (PE-Core) CLIP models.

The numbers are those of Meta's `core/vision_encoder/config.py` (PE paper, Bolya et al. 2025,
Table "PE-Core"). The thesis (§2.3) uses PE-Core-L14-336.
"demo-tiny" is this project's own small model with the same architecture, used by the demo profile
(brief contrastive pre-training on synthetic data) and by the tests.
"""
from __future__ import annotations

from dataclasses import dataclass

from .tokenizer import CLIP_VOCAB_SIZE


@dataclass(frozen=True)
class VisionConfig:
    image_size: int
    patch_size: int
    width: int
    layers: int
    heads: int
    mlp_dim: int
    output_dim: int
    use_cls_token: bool = True
    pool_heads: int = 8  # `attn_pooler_heads`: the attention-pooling probe always has 8 heads
    ln_eps: float = 1e-5

    def __post_init__(self):
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.width % self.heads or self.width % self.pool_heads:
            raise ValueError(f"width {self.width} must be divisible by heads {self.heads} and pool_heads {self.pool_heads}")
        if (self.width // self.heads) % 4:
            # 2D RoPE splits each head in an x half and a y half, each made of rotated pairs.
            raise ValueError(f"head_dim {self.width // self.heads} must be a multiple of 4 for 2D RoPE")

    @property
    def grid(self) -> int:
        """Patches per side at the native resolution."""
        return self.image_size // self.patch_size

    @property
    def head_dim(self) -> int:
        return self.width // self.heads


@dataclass(frozen=True)
class TextConfig:
    width: int
    layers: int
    heads: int
    mlp_dim: int
    output_dim: int
    context_length: int = 32
    vocab_size: int = CLIP_VOCAB_SIZE  # 49,408: 256 bytes + 256 `</w>` bytes + 48,894 merges + SOT + EOT
    ln_eps: float = 1e-5

    def __post_init__(self):
        if self.width % self.heads:
            raise ValueError(f"width {self.width} must be divisible by heads {self.heads}")


@dataclass(frozen=True)
class CLIPConfig:
    name: str
    vision: VisionConfig
    text: TextConfig


# The text tower shared (as one object) by B16 and L14, and the one of T16/S16.
_TEXT_L = TextConfig(width=1024, layers=24, heads=16, mlp_dim=4096, output_dim=1024)
_TEXT_S = TextConfig(width=512, layers=12, heads=8, mlp_dim=2048, output_dim=512)

CONFIGS: dict[str, CLIPConfig] = {
    c.name: c
    for c in (
        CLIPConfig("PE-Core-T16-384", VisionConfig(384, 16, 192, 12, 3, 768, 512), _TEXT_S),
        CLIPConfig("PE-Core-S16-384", VisionConfig(384, 16, 384, 12, 6, 1536, 512), _TEXT_S),
        CLIPConfig("PE-Core-B16-224", VisionConfig(224, 16, 768, 12, 12, 3072, 1024), _TEXT_L),
        CLIPConfig("PE-Core-L14-336", VisionConfig(336, 14, 1024, 24, 16, 4096, 1024), _TEXT_L),
        CLIPConfig(
            "PE-Core-G14-448",
            VisionConfig(448, 14, 1536, 50, 16, 8960, 1280, use_cls_token=False),
            TextConfig(width=1280, layers=24, heads=20, mlp_dim=5120, output_dim=1280, context_length=72),
        ),
        CLIPConfig(
            "demo-tiny",
            VisionConfig(64, 8, 64, 6, 2, 256, 64),
            TextConfig(width=64, layers=3, heads=2, mlp_dim=256, output_dim=64, vocab_size=1024),
        ),
    )
}


def get_config(name: str | CLIPConfig) -> CLIPConfig:
    """Look a config up by name (a CLIPConfig is passed through unchanged)."""
    if isinstance(name, CLIPConfig):
        return name
    try:
        return CONFIGS[name]
    except KeyError:
        raise KeyError(f"unknown model config {name!r}; known configs: {', '.join(CONFIGS)}") from None
