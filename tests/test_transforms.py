"""§3.1 Listing 3.1 training augmentation and the evaluation transform."""
import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2

from replication.transforms import eval_transform, train_transform


def _image(size=48, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def test_eval_transform_is_squash_resize_and_normalise():
    image = _image(48)
    out = eval_transform(32)(image)
    # reference: PIL bilinear resize, then (x / 255 - 0.5) / 0.5, in float64
    ref = np.asarray(image.resize((32, 32), Image.BILINEAR), dtype=np.float64) / 255.0
    ref = torch.from_numpy((ref - 0.5) / 0.5).permute(2, 0, 1)
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref, atol=1e-6, rtol=0)


def test_train_transform_matches_listing_3_1():
    ops = train_transform(32).transforms
    kinds = [type(op) for op in ops]
    assert kinds == [v2.RandomHorizontalFlip, v2.ColorJitter, v2.RandomAffine, v2.Resize, v2.ToImage,
                     v2.ToDtype, v2.Normalize, v2.RandomErasing]
    flip, jitter, affine, resize, _, _, norm, erase = ops
    assert flip.p == 0.5
    assert jitter.brightness == (0.8, 1.2) and jitter.contrast == (0.8, 1.2) and jitter.saturation == (0.8, 1.2)
    assert jitter.hue is None
    assert affine.degrees == [-10.0, 10.0] and affine.translate == (0.05, 0.05) and affine.scale == (0.9, 1.1)
    assert resize.size == [32, 32]
    assert norm.mean == [0.5, 0.5, 0.5] and norm.std == [0.5, 0.5, 0.5]
    assert erase.p == 0.5 and erase.scale == (0.02, 0.2) and erase.ratio == (0.3, 3.3)


def test_train_transform_output_and_determinism_under_seed():
    image = _image(40, seed=1)
    t = train_transform(32)
    torch.manual_seed(3)
    a = t(image)
    torch.manual_seed(3)
    b = t(image)
    assert a.shape == (3, 32, 32) and a.dtype == torch.float32
    assert a.min() >= -1 and a.max() <= 1
    torch.testing.assert_close(a, b)
    # augmentation is random: different seeds give different images
    torch.manual_seed(4)
    assert not torch.equal(a, t(image))


def test_train_resize_is_bilinear():
    """Listing 3.1's Resize is bilinear with antialiasing: on a PIL image it gives PIL's bilinear resize."""
    image = _image(48, seed=2)
    resize = train_transform(32).transforms[3]
    got = np.asarray(resize(image))
    np.testing.assert_array_equal(got, np.asarray(image.resize((32, 32), Image.BILINEAR)))
