"""Image transforms of the training and evaluation pipelines (thesis §3.1, Listing 3.1).

Both take a PIL image (the engine opens the prepared JPEG crops with PIL) and return a float tensor
(3, S, S) normalised to [-1, 1] with mean = std = 0.5, the PE-Core convention.

* ``train_transform(size)``: Listing 3.1 written with ``torchvision.transforms.v2``. The listing omits
  the PIL -> tensor conversion that ``Normalize`` needs; it goes right after ``Resize`` so the geometric
  and colour operations run on the 8-bit image exactly as in the listing, and RandomErasing, listed after
  Normalize, erases with 0 = mid-grey in the normalised space.
* ``eval_transform(size)``: Meta's evaluation preprocessing (squash-resize bilinear + normalise),
  reused from ``replication.pe.image_transform`` so the two never drift apart.
"""
from __future__ import annotations

import torch
from torchvision.transforms import v2

from replication.pe import MEAN, STD, image_transform


def train_transform(image_size: int) -> v2.Compose:
    """§3.1 Listing 3.1 augmentation; ``image_size`` is the model resolution (336 for PE-Core-L14-336)."""
    return v2.Compose([
        v2.RandomHorizontalFlip(),
        v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2),
        v2.RandomAffine(degrees=10, translate=(0.05, 0.05), scale=(0.9, 1.1)),
        v2.Resize((image_size, image_size), interpolation=v2.InterpolationMode.BILINEAR, antialias=True),
        v2.ToImage(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean=list(MEAN), std=list(STD)),
        v2.RandomErasing(p=0.5, scale=(0.02, 0.2), ratio=(0.3, 3.3)),
    ])


def eval_transform(image_size: int):
    """Squash-resize to (size, size) bilinear, to [0, 1], normalise 0.5/0.5 (Meta's eval transform)."""
    return image_transform(image_size)
