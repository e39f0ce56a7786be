"""Face cropping (thesis §2.7): SSD preprocessing and choice of face with a stub net, crop
geometry, detector-file checks, and decoding of bad images."""
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from replication.data.faces import (PROTOTXT_SHA1, DetectorFilesError, ImageError, SSDFaceDetector, load_rgb,
                                    locate_ssd_files, resize, sha1, square_crop)

PROTOTXT = Path(__file__).resolve().parents[2] / "shared" / "face-detector" / "deploy.prototxt"
needs_prototxt = pytest.mark.skipif(not PROTOTXT.is_file(), reason="shared deploy.prototxt not available")


class StubNet:
    """Stands in for cv2.dnn_Net: records the input blob, returns fixed detections."""

    def __init__(self, detections):
        self.detections = np.asarray(detections, np.float32).reshape(1, 1, -1, 7)
        self.blob = None

    def setInput(self, blob):  # noqa: N802 (OpenCV's name)
        self.blob = blob

    def forward(self):
        return self.detections


def test_blob_is_bgr_300_minus_mean():
    rgb = np.zeros((50, 80, 3), np.uint8)
    rgb[:] = (123, 177, 104)  # RGB of the BGR mean (104, 177, 123)
    rgb[0, 0] = (133, 177, 104)  # one pixel with R + 10
    blob = SSDFaceDetector.blob(rgb)
    assert blob.shape == (1, 3, 300, 300)
    assert np.abs(blob[0, :, 150, 150]).max() == 0  # mean removed, channel order BGR
    assert blob[0, 2, 0, 0] > 0 and blob[0, 0, 0, 0] == 0  # the R excess lands in channel 2 (BGR)


def test_most_confident_face_above_threshold():
    det = [[0, 1, 0.6, 0.0, 0.0, 0.5, 0.5],
           [0, 1, 0.9, 0.25, 0.5, 0.75, 1.2],  # best; y1 beyond the image is clipped
           [0, 1, 0.95, 0.5, 0.5, 0.4, 0.6]]  # degenerate box (x1 < x0) is ignored
    found = SSDFaceDetector(StubNet(det)).detect(np.zeros((100, 200, 3), np.uint8))
    assert found == ((50.0, 50.0, 150.0, 100.0), pytest.approx(0.9))
    assert SSDFaceDetector(StubNet(det), threshold=0.96).detect(np.zeros((100, 200, 3), np.uint8)) is None
    # the threshold is the lowest confidence taken (README: "confidence ≥ 0.5"; --threshold 1 takes a sure face)
    exact = [[0, 1, 0.5, 0.25, 0.5, 0.75, 1.0]]
    assert SSDFaceDetector(StubNet(exact), threshold=0.5).detect(np.zeros((100, 200, 3), np.uint8))[1] == 0.5


def test_square_crop_geometry():
    rgb = np.zeros((100, 100, 3), np.uint8)
    rgb[40:60, 30:50] = 255  # the "face"
    crop = square_crop(rgb, (30, 40, 50, 60), size=20, margin=0.0)
    assert crop.shape == (20, 20, 3) and crop.min() == 255  # exactly the box
    crop = square_crop(rgb, (30, 40, 50, 60), size=40, margin=0.5)  # side 40 around the box
    assert crop[10:30, 10:30].min() == 255 and crop[:9].max() == 0
    edge = square_crop(rgb, (0, 0, 20, 20), size=40, margin=0.5)  # padded, face stays centred
    assert edge[:10].max() == 0 and edge.shape == (40, 40, 3)


def test_square_crop_of_a_tall_box_is_its_height_wide():
    """The square's side is the box's longer side (here the height, 30), times 1 + 2 x margin, centred on it."""
    rgb = np.zeros((100, 100, 3), np.uint8)
    rgb[40:70, 30:50] = 255  # a face 20 wide, 30 tall
    crop = square_crop(rgb, (30, 40, 50, 70), size=30, margin=0.0)  # columns 25..55, rows 40..70
    assert crop[:, 5:25].min() == 255 and crop[:, :5].max() == 0 and crop[:, 25:].max() == 0


@pytest.mark.parametrize("box, face, pad", [
    ((40, 40, 60, 60), (slice(10, 30), slice(10, 30)), (slice(None), slice(30, None))),   # at the right edge
    ((20, 0, 40, 20), (slice(10, 30), slice(10, 30)), (slice(None, 10), slice(None))),    # at the top edge
    ((20, 80, 40, 100), (slice(10, 30), slice(10, 30)), (slice(30, None), slice(None)))])  # at the bottom edge
def test_square_crop_pads_black_beyond_any_edge_of_a_tall_image(box, face, pad):
    """A 60 x 100 (w x h) grey image, a white 20-px face at an edge, margin 0.5: the 40-px square keeps the face
    in its centre and is black where it leaves the image, on whichever side (not shifted, clamped or smeared)."""
    rgb = np.full((100, 60, 3), 100, np.uint8)
    x0, y0, x1, y1 = box
    rgb[y0:y1, x0:x1] = 255
    crop = square_crop(rgb, box, size=40, margin=0.5)
    assert crop.shape == (40, 40, 3)
    assert crop[face].min() == 255 and crop[pad].max() == 0
    inside = np.ones((40, 40), bool)
    inside[face] = inside[pad] = False
    assert (crop[inside] == 100).all()  # the rest is the image around the face


def test_resize_averages_when_shrinking():
    """Shrinking takes the mean of each block (area interpolation), not a sample of it: one bright column in
    five becomes a uniform 255 / 5 = 51, where linear or nearest sampling gives all black or all white."""
    stripes = np.zeros((50, 50, 3), np.uint8)
    stripes[:, ::5] = 255
    assert (resize(stripes, 10) == 51).all()


@pytest.mark.parametrize("box", [(30, 40, 30, 60), (30, 40, 50, 40), (50, 40, 30, 60), (30, 40, float("nan"), 60)])
def test_square_crop_refuses_a_box_without_area(box):
    """Such a box used to give a 1x1 crop resized to a valid-looking image."""
    with pytest.raises(ValueError) as e:
        square_crop(np.zeros((100, 100, 3), np.uint8), box, size=20)
    assert str(e.value) == f"box {box} has no area: expected x0 < x1 and y0 < y1"


@needs_prototxt
def test_prototxt_is_the_published_one_and_loads():
    assert sha1(PROTOTXT) == PROTOTXT_SHA1
    assert len(cv2.dnn.readNetFromCaffe(str(PROTOTXT)).getLayerNames()) == 112


@needs_prototxt
def test_missing_or_fake_detector_files(tmp_path):
    with pytest.raises(DetectorFilesError, match="needs --detector-dir"):
        locate_ssd_files(None)
    with pytest.raises(DetectorFilesError, match="dnn_samples_face_detector_20180205_fp16"):
        locate_ssd_files(tmp_path)
    shutil.copy(PROTOTXT, tmp_path / "deploy.prototxt")
    (tmp_path / "res10_300x300_ssd_iter_140000_fp16.caffemodel").write_text("<html>not a model</html>")
    with pytest.raises(DetectorFilesError, match="expected 31fc22bfdd907567a04bb45b7cfad29966caddc1"):
        locate_ssd_files(tmp_path)


def _save(tmp_path, name, array, fmt="JPEG", mode=None):
    path = tmp_path / name
    Image.fromarray(array, mode).save(path, format=fmt)
    return path


def test_load_rgb_bad_inputs(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 255, (40, 30, 3), dtype=np.uint8)
    good = _save(tmp_path, "good.jpg", rgb)
    img, notes = load_rgb(good)
    assert img.shape == (40, 30, 3) and notes == []
    gray = _save(tmp_path, "gray.jpg", rgb[:, :, 0])
    img, notes = load_rgb(gray)
    assert img.shape == (40, 30, 3) and notes == ["grayscale_converted"]
    assert (img[:, :, 0] == img[:, :, 1]).all()
    rgba = np.dstack([rgb, np.zeros((40, 30), np.uint8)])  # fully transparent
    img, notes = load_rgb(_save(tmp_path, "alpha.jpg", rgba, fmt="PNG"))  # a PNG under a .jpg name
    assert notes == ["alpha_dropped"] and img.min() == 255  # composited on white
    _save(tmp_path, "thin.png", rgb[:, :1], fmt="PNG")  # one pixel wide
    data = good.read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("hello")
    for name, reason in (("cut.jpg", "truncated_or_corrupt"), ("empty.jpg", "empty_file"),
                         ("text.jpg", "not_an_image"), ("absent.jpg", "missing_file"), ("thin.png", "too_small")):
        with pytest.raises(ImageError) as e:
            load_rgb(tmp_path / name)
        assert e.value.reason == reason


def test_load_rgb_applies_exif_orientation(tmp_path):
    """A phone photo stored landscape with Orientation 6 is shown (and boxed) rotated 90° clockwise,
    which is what cv2.imread returns; load_rgb must return the same picture."""
    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:, :10] = 255  # white left band -> top band once rotated clockwise
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90° CW to display
    path = tmp_path / "rotated.jpg"
    Image.fromarray(stored).save(path, exif=exif.tobytes())
    rgb, notes = load_rgb(path)
    assert rgb.shape == (40, 20, 3) == cv2.imread(str(path)).shape and notes == []
    assert rgb[:8].min() > 200 and rgb[12:].max() < 50
