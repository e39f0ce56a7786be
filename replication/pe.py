"""The Perception Encoder (PE-Core) CLIP model, written out in plain PyTorch.

PE paper: Bolya et al., "Perception Encoder: The best visual embeddings are not at the output of the
network" (2025); thesis §2.3 (the backbone) and §3 (what gets adapted). The code mirrors Meta's
`core/vision_encoder/pe.py` (github.com/facebookresearch/perception_models).

Module and attribute names are Meta's, so an official checkpoint maps onto this model key for key.
The one deliberate difference: the fused q|k|v projection of each transformer block is an
``nn.Linear`` called ``attn.in_proj`` instead of raw ``in_proj_weight``/``in_proj_bias`` parameters.
The thesis's code does the same (its `migrate_weights`) so that LoRA/DoRA can wrap it;
checkpoint.py renames the keys when loading. Every sub-layer is *called as a module*
(``self.in_proj(x)``, ``self.out_proj(x)``, ``self.mlp(x)``) so that a wrapped module takes effect.

    image (B,3,H,W) -> conv1 patches -> [CLS] + tokens -> + abs pos-emb -> ln_pre
        -> N x [x + attn(ln_1 x) (2D RoPE on q,k);  x + mlp(ln_2 x)] -> ln_post
        -> attention pooling (1 probe, 8 heads, + MLP) -> @ proj -> (B, output_dim)
    tokens (B,32) -> embed + pos-emb -> N x causal blocks -> ln_final -> EOT token -> @ text_projection
"""
from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .config import CLIPConfig, TextConfig, VisionConfig
from .rope import Rope2D


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, rope: Rope2D | None = None,
           causal: bool = False) -> torch.Tensor:
    """Multi-head scaled dot-product attention on projected queries (B, Nq, C) and keys/values (B, N, C).

    Splits C into `heads` heads of C/heads channels (heads outer, as Meta's rearrange "b n (h d)"),
    rotates q and k with `rope` if given, masks future tokens if `causal`, and merges the heads back:
    returns (B, Nq, C), ready for the output projection. The one attention of every module here (the
    blocks, the pooler, and MTLoRA's task versions of both, mtlora.py).

    q, k, v may be slices of a fused projection (`qkv.chunk(3, -1)`): the head split is then a view with
    the very strides of Meta's fused reshape/permute, so the result is the same to the bit.
    """
    (B, Nq, C), N = q.shape, k.shape[1]

    def split(t, n):  # (B, n, C) -> (B, heads, n, head_dim)
        return t.view(B, n, heads, C // heads).transpose(1, 2)

    q, k, v = split(q, Nq), split(k, N), split(v, N)
    if rope is not None:
        q, k = rope(q), rope(k)
    out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)  # scale = head_dim**-0.5
    return out.transpose(1, 2).reshape(B, Nq, C)


class SelfAttention(nn.Module):
    """Multi-head self-attention with a fused q|k|v projection (`in_proj`: width -> 3*width).

    `rope` (vision) rotates q and k; `causal` (text) masks future tokens. Both are plain attributes,
    so a block keeps the signature block(x) -> x.
    """

    def __init__(self, width: int, heads: int, rope: Rope2D | None = None, causal: bool = False):
        super().__init__()
        self.heads = heads
        self.in_proj = nn.Linear(width, 3 * width)
        self.out_proj = nn.Linear(width, width)
        self.rope = rope
        self.causal = causal

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.in_proj(x).chunk(3, dim=-1)  # q|k|v order, then heads, as Meta's rearrange
        return self.out_proj(attend(q, k, v, self.heads, self.rope, self.causal))


def _mlp(width: int, hidden: int) -> nn.Sequential:
    # Names c_fc/gelu/c_proj as in Meta's (and OpenAI CLIP's) MLP, so keys are mlp.c_fc.weight etc.
    return nn.Sequential(OrderedDict([
        ("c_fc", nn.Linear(width, hidden)),
        ("gelu", nn.GELU()),  # exact (erf) GELU
        ("c_proj", nn.Linear(hidden, width)),
    ]))


class ResidualAttentionBlock(nn.Module):
    """Pre-LayerNorm transformer block (no LayerScale, no drop-path: PEConfig defaults)."""

    def __init__(self, width: int, heads: int, mlp_dim: int, ln_eps: float = 1e-5,
                 rope: Rope2D | None = None, causal: bool = False):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width, eps=ln_eps)
        self.attn = SelfAttention(width, heads, rope=rope, causal=causal)
        self.ln_2 = nn.LayerNorm(width, eps=ln_eps)
        self.mlp = _mlp(width, mlp_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """A stack of blocks (`resblocks`), the first `checkpoint_blocks` of them activation-checkpointed while
    training (0: none; at least the number of blocks: all).

    Checkpointing keeps only a block's input and recomputes the rest in backward: one more forward of
    that block for the memory of its activations, or a little less (torch stops the replay once it has
    what backward needs, which in a plain block leaves out the last MLP product). Checkpointing the
    *first* blocks costs the same compute as any other choice of as many, and no more memory: backward
    reaches them last, when the later blocks have freed what they kept, so the one block recomputed at a
    time does not add to that."""

    def __init__(self, width, layers, heads, mlp_dim, ln_eps=1e-5, rope=None, causal=False):
        super().__init__()
        self.checkpoint_blocks = 0
        self.resblocks = nn.ModuleList(
            ResidualAttentionBlock(width, heads, mlp_dim, ln_eps, rope=rope, causal=causal) for _ in range(layers)
        )

    @property
    def checkpoint_blocks(self) -> int:
        return self._checkpoint_blocks

    @checkpoint_blocks.setter
    def checkpoint_blocks(self, blocks: int) -> None:
        if blocks < 0:
            raise ValueError(f"checkpoint_blocks must be >= 0 (0: none), got {blocks}")
        self._checkpoint_blocks = int(blocks)

    def forward(self, x: torch.Tensor, layer_idx: int = -1) -> torch.Tensor:
        """Run blocks 0..layer_idx (all by default)."""
        stop = len(self.resblocks) if layer_idx < 0 else layer_idx + 1
        checkpointed = self.checkpoint_blocks if self.training and torch.is_grad_enabled() else 0
        for i, block in enumerate(self.resblocks[:stop]):
            # A frozen block on an input without gradient builds no graph; checkpointing it would only hold
            # its input.
            if i < checkpointed and (x.requires_grad or any(p.requires_grad for p in block.parameters())):
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return x


class PoolAttention(nn.Module):
    """nn.MultiheadAttention's math with its parameter names (in_proj_weight, in_proj_bias, out_proj).

    The fused in_proj stays a raw Parameter, as in Meta's pooler, so adapters cannot target it (the thesis
    adapts only the pooler's out_proj and MLP: its §3.6 counts hold no more); out_proj is an nn.Linear *called as a module*.
    """

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * width))
        self.out_proj = nn.Linear(width, width)

    def forward(self, query: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        C = query.shape[-1]
        wq, wkv = self.in_proj_weight.split([C, 2 * C])
        bq, bkv = self.in_proj_bias.split([C, 2 * C])
        q = F.linear(query, wq, bq)
        k, v = F.linear(x, wkv, bkv).chunk(2, dim=-1)  # k|v in one product over the tokens
        return self.out_proj(attend(q, k, v, self.heads))


class AttentionPooling(nn.Module):
    """PE's attention pooling: one learned probe attends over all tokens (CLS included), then an MLP.

    There is no residual from the probe itself: x = attn(probe, tokens); x = x + mlp(layernorm(x)).
    The MLP width is 4 x width (`mlp_ratio=4` in Meta's AttentionPooling), whatever the tower's mlp_dim.
    """

    def __init__(self, width: int, heads: int, ln_eps: float = 1e-5):
        super().__init__()
        self.probe = nn.Parameter(torch.randn(1, 1, width))
        self.attn = PoolAttention(width, heads)
        self.layernorm = nn.LayerNorm(width, eps=ln_eps)
        self.mlp = _mlp(width, 4 * width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = self.probe.expand(x.shape[0], -1, -1).to(x.dtype)
        x = self.attn(q, x)
        x = x + self.mlp(self.layernorm(x))
        return x.squeeze(1)


class VisionTransformer(nn.Module):
    """PE-Core vision tower (Meta's `VisionTransformer`). forward(images) -> (B, output_dim) projected, not normalised."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        self.conv1 = nn.Conv2d(3, w, kernel_size=cfg.patch_size, stride=cfg.patch_size, bias=False)
        scale = w ** -0.5
        if cfg.use_cls_token:
            self.class_embedding = nn.Parameter(scale * torch.randn(w))
        self.positional_embedding = nn.Parameter(scale * torch.randn(cfg.grid ** 2 + cfg.use_cls_token, w))
        self.ln_pre = nn.LayerNorm(w, eps=cfg.ln_eps)
        # One RoPE object shared by every block; its tables follow the input's grid.
        self.rope = Rope2D(cfg.head_dim, cls_token=cfg.use_cls_token)
        self.transformer = Transformer(w, cfg.layers, cfg.heads, cfg.mlp_dim, cfg.ln_eps, rope=self.rope)
        self.ln_post = nn.LayerNorm(w, eps=cfg.ln_eps)
        self.attn_pool = AttentionPooling(w, cfg.pool_heads, cfg.ln_eps)
        self.proj = nn.Parameter(scale * torch.randn(w, cfg.output_dim))
        _init_transformer(self.transformer, w)
        _init_pool(self.attn_pool)

    @property
    def checkpoint_blocks(self) -> int:
        """How many of the first blocks are activation-checkpointed while training (`Transformer`)."""
        return self.transformer.checkpoint_blocks

    @checkpoint_blocks.setter
    def checkpoint_blocks(self, blocks: int) -> None:
        self.transformer.checkpoint_blocks = blocks

    def _positional_embedding(self, grid_h: int, grid_w: int) -> torch.Tensor:
        """The learned absolute position embedding, bilinearly resized for another patch grid (CLS row kept)."""
        pos, g = self.positional_embedding, self.cfg.grid
        if (grid_h, grid_w) == (g, g):
            return pos
        cls, patches = (pos[:1], pos[1:]) if self.cfg.use_cls_token else (pos[:0], pos)
        patches = patches.reshape(1, g, g, -1).permute(0, 3, 1, 2)
        patches = F.interpolate(patches, size=(grid_h, grid_w), mode="bilinear", align_corners=False)
        return torch.cat([cls, patches.permute(0, 2, 3, 1).reshape(grid_h * grid_w, -1)], dim=0)

    def forward_features(self, x: torch.Tensor, norm: bool = True, layer_idx: int = -1) -> torch.Tensor:
        """Token map (B, N, width) after blocks 0..layer_idx (CLS token first), with ln_post if `norm`."""
        x = self.conv1(x)  # (B, w, gh, gw)
        grid_h, grid_w = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2)  # (B, gh*gw, w), row-major: y outer, x inner
        # no cast to the patches' dtype: under fp16 autocast the CLS token and the positional embedding join
        # the half-precision patches in fp32, as in Meta's forward (torch.cat and + promote)
        if self.cfg.use_cls_token:
            x = torch.cat([self.class_embedding.expand(x.shape[0], 1, -1), x], dim=1)
        x = x + self._positional_embedding(grid_h, grid_w)
        self.rope.update_grid(grid_h, grid_w, x.device)
        x = self.ln_pre(x)
        x = self.transformer(x, layer_idx=layer_idx)
        return self.ln_post(x) if norm else x

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """Attention-pooled (B, width) embedding, before `proj`."""
        return self.attn_pool(tokens)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.forward_features(x)) @ self.proj


class TextTransformer(nn.Module):
    """PE-Core (CLIP) text tower (Meta's `TextTransformer`): causal pre-LN blocks, no RoPE, EOT-token pooling."""

    def __init__(self, cfg: TextConfig):
        super().__init__()
        w = cfg.width
        self.text_cfg = cfg
        self.token_embedding = nn.Embedding(cfg.vocab_size, w)
        self.positional_embedding = nn.Parameter(torch.empty(cfg.context_length, w))
        self.transformer = Transformer(w, cfg.layers, cfg.heads, cfg.mlp_dim, cfg.ln_eps, causal=True)
        self.ln_final = nn.LayerNorm(w, eps=cfg.ln_eps)
        self.text_projection = nn.Parameter(torch.empty(w, cfg.output_dim))
        # CLIP's text initialisation (Radford et al. 2021, as in open_clip)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        nn.init.normal_(self.text_projection, std=w ** -0.5)
        _init_transformer(self.transformer, w)

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        """Token ids (B, L<=context) -> (B, output_dim), projected, not normalised."""
        x = self.token_embedding(text) + self.positional_embedding[: text.shape[1]]
        x = self.ln_final(self.transformer(x))
        # The EOT token has the largest id (49407), so argmax finds it (pool_type="argmax").
        x = x[torch.arange(x.shape[0], device=x.device), text.argmax(dim=-1)]
        return x @ self.text_projection


class CLIP(TextTransformer):
    """Vision tower + text tower + temperature.

    As in Meta's code, CLIP *is* the text tower (subclass), so text keys sit at the top level of the
    state_dict (token_embedding, transformer.resblocks..., text_projection) and vision keys under `visual.`.
    """

    def __init__(self, cfg: CLIPConfig):
        super().__init__(cfg.text)
        self.cfg = cfg
        self.visual = VisionTransformer(cfg.vision)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Normalised images (B,3,H,W) -> (B, D) features (L2-normalised only if asked)."""
        x = self.visual(images)
        return F.normalize(x, dim=-1) if normalize else x

    def encode_text(self, text: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Token ids (B, context) -> (B, D) features (L2-normalised only if asked)."""
        x = super().forward(text)
        return F.normalize(x, dim=-1) if normalize else x

    def forward(self, images: torch.Tensor, text: torch.Tensor):
        """(normalised image features, normalised text features, logit_scale.exp()), as Meta's CLIP."""
        return self.encode_image(images, True), self.encode_text(text, True), self.logit_scale.exp()


def _init_transformer(transformer: Transformer, width: int) -> None:
    """CLIP-style init scaled with depth (Radford et al. 2021) — only matters for from-scratch training."""
    attn_std, fc_std = width ** -0.5, (2 * width) ** -0.5
    proj_std = attn_std * (2 * len(transformer.resblocks)) ** -0.5
    for block in transformer.resblocks:
        nn.init.normal_(block.attn.in_proj.weight, std=attn_std)
        nn.init.zeros_(block.attn.in_proj.bias)
        nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
        nn.init.zeros_(block.attn.out_proj.bias)
        nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
        nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)


def _init_pool(pool: AttentionPooling) -> None:
    # nn.MultiheadAttention's own initialisation
    nn.init.xavier_uniform_(pool.attn.in_proj_weight)
    nn.init.zeros_(pool.attn.in_proj_bias)
    nn.init.zeros_(pool.attn.out_proj.bias)


# --- preprocessing -------------------------------------------------------------------------------------
MEAN = STD = (0.5, 0.5, 0.5)  # PE normalises to [-1, 1] (Meta's transforms.py; timm uses the same)


def _to_rgb(image):
    return image.convert("RGB")


def image_transform(image_size: int):
    """Meta's eval preprocessing (`transforms.get_image_transform`, center_crop=False), for PIL images:
    squash-resize to (size, size) bilinear (no crop), RGB, to tensor in [0,1], normalise mean 0.5 std 0.5."""
    import torchvision.transforms as T

    return T.Compose([
        T.Resize((image_size, image_size), interpolation=T.InterpolationMode.BILINEAR),
        T.Lambda(_to_rgb),
        T.ToTensor(),
        T.Normalize(mean=MEAN, std=STD),
    ])
