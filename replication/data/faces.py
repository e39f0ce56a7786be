"""Face cropping as in thesis §2.7: OpenCV DNN ``res10_300x300_ssd_iter_140000`` or the dataset's boxes.

Three ways to get the face of an image (chosen per dataset in prepare.py):
* ``ssd``   - the most confident SSD detection at or above a threshold (0.5 by default);
* ``boxes`` - the face box the dataset ships (LAGENDA, RAF-DB, VGGFace2 loose boxes), which
  §2.7 prefers to the SSD wherever a record has one;
* ``none``  - the whole image, for datasets that ship aligned face chips.
A box is turned into a square crop with a margin and resized to the model resolution
(§3.1: images are resized to 336 px). The margin is not stated in the thesis.

Images are decoded with Pillow, which (unlike cv2.imread) reports truncated files instead
of returning a half-grey picture; grayscale and alpha images are converted and reported.
Like cv2.imread (the thesis's OpenCV pipeline), the EXIF orientation is applied, so shipped
boxes, given in the displayed orientation, land on the face.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from replication.files import atomic_write, sha1

from .readers import Box, box_has_area

# File name -> published SHA-1 (where each is published: DOWNLOAD_HELP).
PROTOTXT = "deploy.prototxt"
PROTOTXT_SHA1 = "7e5cc2cefc23908176a73f58c9b0ea7e5c74db2d"
CAFFEMODELS = {  # fp16 first: the thesis names the fp16 model
    "res10_300x300_ssd_iter_140000_fp16.caffemodel": "31fc22bfdd907567a04bb45b7cfad29966caddc1",
    "res10_300x300_ssd_iter_140000.caffemodel": "15aa726b4d46d9f023526d85537db81cbc8dd566",
}
DOWNLOAD_HELP = """\
The OpenCV DNN face detector (thesis §2.7) needs two files in {folder}:
  deploy.prototxt  (SHA-1 7e5cc2ce...)
      https://github.com/opencv/opencv/raw/master/samples/dnn/face_detector/deploy.prototxt
  and one of
  res10_300x300_ssd_iter_140000_fp16.caffemodel  (SHA-1 31fc22bf..., 5.1 MB, used by the thesis)
      https://raw.githubusercontent.com/opencv/opencv_3rdparty/dnn_samples_face_detector_20180205_fp16/res10_300x300_ssd_iter_140000_fp16.caffemodel
  res10_300x300_ssd_iter_140000.caffemodel  (fp32, SHA-1 15aa726b..., 10.1 MB)
      https://github.com/opencv/opencv_3rdparty/raw/dnn_samples_face_detector_20170830/res10_300x300_ssd_iter_140000.caffemodel
{options}"""
# DOWNLOAD_HELP's last line: what `prepare` takes instead (`reproduce` passes its own)
PREPARE_OPTIONS = "Pass the folder with --detector-dir, or use --detector boxes|none (no silent fallback)."

SSD_SIZE = 300
SSD_MEAN = (104.0, 177.0, 123.0)  # BGR means, scale 1.0, no channel swap (opencv models.yml `opencv_fd`)


class DetectorFilesError(FileNotFoundError):
    """The SSD files are missing or are not the published ones."""


def locate_ssd_files(folder: str | Path | None, options: str = PREPARE_OPTIONS) -> tuple[Path, Path]:
    """(prototxt, caffemodel) in ``folder``, each checked against its published SHA-1; an error ends with
    ``options``, what the caller's command accepts."""
    if folder is None:
        raise DetectorFilesError("the SSD face detector needs --detector-dir.\n"
                                 + DOWNLOAD_HELP.format(folder="DIR", options=options))
    folder = Path(folder)
    help_text = DOWNLOAD_HELP.format(folder=folder, options=options)
    prototxt = folder / PROTOTXT
    model = next((folder / n for n in CAFFEMODELS if (folder / n).is_file()), None)
    if not prototxt.is_file() or model is None:
        missing = [str(p) for p in (prototxt,) if not p.is_file()] + ([] if model else ["a caffemodel"])
        raise DetectorFilesError(f"missing {', '.join(missing)}\n{help_text}")
    for path, expected in ((prototxt, PROTOTXT_SHA1), (model, CAFFEMODELS[model.name])):
        actual = sha1(path)
        if actual != expected:  # e.g. a GitHub HTML page saved under the model's name
            raise DetectorFilesError(f"{path} has SHA-1 {actual}, expected {expected}\n{help_text}")
    return prototxt, model


class SSDFaceDetector:
    """Most confident face of the res10 SSD. ``net`` is anything with setInput/forward (tests stub it)."""

    def __init__(self, net, threshold: float = 0.5):
        self.net, self.threshold = net, threshold

    @classmethod
    def from_dir(cls, folder: str | Path | None, threshold: float = 0.5) -> "SSDFaceDetector":
        prototxt, model = locate_ssd_files(folder)
        return cls(cv2.dnn.readNetFromCaffe(str(prototxt), str(model)), threshold)

    @staticmethod
    def blob(rgb: np.ndarray) -> np.ndarray:
        bgr = cv2.resize(rgb[:, :, ::-1], (SSD_SIZE, SSD_SIZE))
        return cv2.dnn.blobFromImage(bgr, 1.0, (SSD_SIZE, SSD_SIZE), SSD_MEAN, swapRB=False)

    def detect(self, rgb: np.ndarray) -> tuple[Box, float] | None:
        """Pixel box (x0, y0, x1, y1) and confidence of the best face, or None below threshold."""
        self.net.setInput(self.blob(rgb))
        det = np.asarray(self.net.forward()).reshape(-1, 7)  # [_, class, conf, x0, y0, x1, y1]
        h, w = rgb.shape[:2]
        boxes = np.clip(det[:, 3:7], 0.0, 1.0) * [w, h, w, h]
        ok = (det[:, 2] >= self.threshold) & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        if not ok.any():
            return None
        best = int(np.argmax(np.where(ok, det[:, 2], -np.inf)))
        return tuple(float(v) for v in boxes[best]), float(det[best, 2])


class ImageError(Exception):
    """An image that cannot be used; ``reason`` is the report.json skip reason."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def load_rgb(path: Path) -> tuple[np.ndarray, list[str]]:
    """Decode an image to uint8 RGB; returns it with notes on conversions that were needed."""
    if not path.is_file():
        raise ImageError("missing_file")
    if path.stat().st_size == 0:
        raise ImageError("empty_file")
    notes = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. PIL's "palette images with transparency"
            with Image.open(path) as im:
                im.load()  # raises OSError on truncated data
                im = ImageOps.exif_transpose(im)  # as cv2.imread does (IMREAD_COLOR honours EXIF)
                if im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info:
                    notes.append("alpha_dropped")
                    # Composite on white rather than keeping arbitrary colours under alpha=0.
                    background = Image.new("RGB", im.size, (255, 255, 255))
                    background.paste(im.convert("RGBA"), mask=im.convert("RGBA").getchannel("A"))
                    im = background
                elif im.mode in ("L", "1", "I", "I;16", "F"):
                    notes.append("grayscale_converted")
                rgb = np.asarray(im.convert("RGB"))
    except UnidentifiedImageError as e:
        raise ImageError("not_an_image", str(e)) from None
    except Image.DecompressionBombError as e:
        raise ImageError("too_large", str(e)) from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError("truncated_or_corrupt", str(e)) from None
    if min(rgb.shape[:2]) < 2:
        raise ImageError("too_small", f"{rgb.shape[1]}x{rgb.shape[0]}")
    return rgb, notes


def square_crop(rgb: np.ndarray, box: Box, size: int, margin: float = 0.2) -> np.ndarray:
    """Square of side max(w, h)·(1 + 2·margin) centred on the box, padded with black outside
    the image (so faces at the border are not shifted), resized to ``size``."""
    if not box_has_area(box):  # would give a 1x1 junk crop (prepare skips such boxes as no_face_box)
        raise ValueError(f"box {box} has no area: expected x0 < x1 and y0 < y1")
    x0, y0, x1, y1 = box
    side = max(x1 - x0, y1 - y0) * (1 + 2 * margin)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    left, top = round(cx - side / 2), round(cy - side / 2)
    side = max(round(side), 1)
    h, w = rgb.shape[:2]
    pad = max(0, -left, -top, left + side - w, top + side - h)
    if pad:
        rgb = cv2.copyMakeBorder(rgb, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=(0, 0, 0))
    crop = rgb[top + pad: top + pad + side, left + pad: left + pad + side]
    return resize(crop, size)


def resize(rgb: np.ndarray, size: int) -> np.ndarray:
    """The whole image squashed to size×size (area interpolation when shrinking)."""
    shrink = min(rgb.shape[:2]) > size
    return cv2.resize(rgb, (size, size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def save_jpeg(rgb: np.ndarray, path: Path, quality: int = 95) -> None:
    """Write atomically so an interrupted run never leaves half a crop."""
    atomic_write(path, lambda tmp: Image.fromarray(rgb).save(tmp, format="JPEG", quality=quality))
