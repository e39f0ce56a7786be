"""2D rotary position embedding (RoPE) of the PE-Core vision tower.

PE paper (Bolya et al. 2025, §2 "Robust pretraining recipe": 2D RoPE added to every attention layer
on top of the learned absolute position embedding). This follows Meta's `core/vision_encoder/rope.py`
after its 2025-05-01 fix:

* per axis, frequencies ``10000 ** (-i / (head_dim/4))`` for i = 0..head_dim/4-1, each repeated twice
  *interleaved* (f0, f0, f1, f1, ...), so channel pairs (2i, 2i+1) rotate together;
* the first half of every head rotates with the patch's x position, the second half with its y position;
* positions start at 1 when there is a CLS token, whose table row is all zeros (identity rotation)
  and comes *first*, as the CLS token does in the sequence.

The table is a plain tensor, not a parameter: it is not in the state_dict and not counted.
"""
from __future__ import annotations

import torch


def axis_frequencies(head_dim: int, theta: float = 10000.0) -> torch.Tensor:
    """The head_dim/4 inverse frequencies of one axis (RotaryEmbedding(dim=head_dim//2), 'lang')."""
    dim = head_dim // 2  # each axis owns half of the head
    return 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)


def rope_angles(grid_h: int, grid_w: int, head_dim: int, cls_token: bool, device=None) -> torch.Tensor:
    """Rotation angle of every (token, channel): shape (grid_h*grid_w [+1], head_dim), fp32.

    Tokens are in row-major order (y outer, x inner), matching the patch embedding's flattening.
    """
    freqs = axis_frequencies(head_dim).to(device)
    offset = 1 if cls_token else 0  # leave position 0 to the CLS token
    ys = torch.arange(grid_h, dtype=torch.float32, device=device) + offset
    xs = torch.arange(grid_w, dtype=torch.float32, device=device) + offset
    # outer product position x frequency, then f0,f0,f1,f1,... (interleaved pairs)
    ang_y = (ys[:, None] * freqs).repeat_interleave(2, dim=-1)  # (grid_h, head_dim/2)
    ang_x = (xs[:, None] * freqs).repeat_interleave(2, dim=-1)  # (grid_w, head_dim/2)
    ang = torch.cat(
        [ang_x[None, :, :].expand(grid_h, -1, -1), ang_y[:, None, :].expand(-1, grid_w, -1)], dim=-1
    ).reshape(grid_h * grid_w, head_dim)
    if cls_token:
        ang = torch.cat([ang.new_zeros(1, head_dim), ang], dim=0)
    return ang


class Rope2D:
    """Holds the rotation table for the current patch grid and rotates q/k with it.

    A plain object (like Meta's), not an nn.Module: it owns no parameters or state_dict entries. The
    table is rebuilt when the grid, device or head size changes (another input resolution).
    """

    def __init__(self, head_dim: int, cls_token: bool):
        self.head_dim = head_dim
        self.cls_token = cls_token
        self.grid = None
        self._key = None
        self.rotation = None

    def update_grid(self, grid_h: int, grid_w: int, device=None) -> None:
        self.grid = (grid_h, grid_w)
        self._table(device)

    def _table(self, device) -> torch.Tensor:
        """e^(i·angle) of every (token, channel pair), complex64 of shape (tokens, head_dim/2)."""
        # Rebuilt lazily per (grid, device): also correct for a block deep-copied before a .to(device).
        key = (self.grid, torch.device(device) if device is not None else torch.device("cpu"))
        if key != self._key:
            pair_angles = rope_angles(*self.grid, self.head_dim, self.cls_token, device=key[1])[:, ::2]
            self.rotation, self._key = torch.polar(torch.ones_like(pair_angles), pair_angles), key
        return self.rotation

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        """Rotate t of shape (B, heads, N, head_dim); N must match the current grid."""
        if self.grid is None:
            raise RuntimeError("Rope2D.update_grid(grid_h, grid_w) must be called before use")
        rotation = self._table(t.device)
        if t.shape[-2] != rotation.shape[0]:
            raise RuntimeError(f"RoPE table is for {rotation.shape[0]} tokens (grid {self.grid}), got {t.shape[-2]}")
        # Channel pair (2i, 2i+1) is the complex number x_2i + i·x_2i+1, rotated by one complex multiply:
        # (a + ib)·(cos + i·sin) = (a·cos − b·sin) + i(b·cos + a·sin), the rotate-half formula of Meta's
        # code. Computed in (at least) fp32 with autocast off, as Meta's, then cast back to the input's
        # dtype. One multiply instead of rotate-half's stack, two products and a sum: RoPE is elementwise
        # work on q and k in every block, paid in memory traffic on a GPU.
        with torch.autocast(device_type=t.device.type, enabled=False):
            pairs = torch.view_as_complex(t.to(torch.promote_types(t.dtype, torch.float32)).unflatten(-1, (-1, 2)))
            return torch.view_as_real(pairs * rotation).flatten(-2).to(t.dtype)
