"""Images for training and evaluation: any image folder, and the photos bundled with scikit-image/scikit-learn.

Images are float32 arrays [H, W, 3] in [0, 1]. Greyscale is replicated to RGB, alpha is dropped, palette images are
expanded, 16-bit images are scaled from [0, 65535]. A file that cannot be decoded is skipped with a warning and
counted, so one bad download does not stop a long training run; an empty result is an error.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ncis_deploy.errors import UserError

log = logging.getLogger("ncis_deploy")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")

# scikit-image photos ship inside its wheel (no download); the two scikit-learn photos are the hold-out set, so
# held-out PSNR is measured on images the trainer never saw.
_SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle_left", "motorcycle_right",
                   "hubble_deep_field", "retina", "immunohistochemistry")
_SKLEARN_PHOTOS = ("china", "flower")
BUNDLED_TRAIN = _SKIMAGE_PHOTOS
BUNDLED_HOLDOUT = _SKLEARN_PHOTOS
_SPLITS = {"all": BUNDLED_TRAIN + BUNDLED_HOLDOUT, "train": BUNDLED_TRAIN, "holdout": BUNDLED_HOLDOUT}
PHOTO_SPLITS = tuple(_SPLITS)


def to_float_rgb(arr: np.ndarray, name: str = "image") -> np.ndarray:
    """uint8/uint16/float array, greyscale or RGB(A) → float32 [H, W, 3] in [0, 1]."""
    a = np.asarray(arr)
    if a.dtype == np.uint8:
        f = a.astype(np.float32) / 255.0
    elif a.dtype == np.uint16:
        f = a.astype(np.float32) / 65535.0
    elif a.dtype in (np.int32, np.uint32, np.int64):  # PIL's 32-bit integer mode for 16-bit PNGs
        f = np.clip(a.astype(np.float32) / 65535.0, 0.0, 1.0)
    elif np.issubdtype(a.dtype, np.floating):
        f = np.clip(a.astype(np.float32), 0.0, 1.0)
    else:
        raise UserError(f"{name}: unsupported pixel type {a.dtype}; convert it to 8- or 16-bit RGB")
    if f.ndim == 2:
        f = f[:, :, None]
    if f.ndim != 3 or f.shape[2] not in (1, 2, 3, 4):
        raise UserError(f"{name}: unsupported image shape {a.shape}; expected greyscale, RGB or RGBA")
    c = f.shape[2]
    if c in (2, 4):  # drop alpha
        f = f[:, :, : c - 1]
    if f.shape[2] == 1:
        f = np.repeat(f, 3, axis=2)
    return np.ascontiguousarray(f)


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Decode one image file to float32 RGB [H, W, 3]; raises UserError if it cannot be decoded."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode == "P" or im.mode == "PA":
                im = im.convert("RGBA")
            elif im.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
                im = im.convert("RGB")
            elif im.mode == "1":
                im = im.convert("L")
            arr = np.asarray(im)
    except FileNotFoundError:
        raise UserError(f"image {path} does not exist") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise UserError(f"cannot decode image {path}: {e}") from None
    return to_float_rgb(arr, str(path))


def list_images(root: str | os.PathLike) -> list[Path]:
    root = Path(root)
    if not root.exists():
        raise UserError(f"data directory {root} does not exist; pass an existing folder of images with --data")
    if not root.is_dir():
        raise UserError(f"data path {root} is not a directory; pass a folder of images with --data")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise UserError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under {root}; "
                        "point --data at a folder of photos")
    return files


def bundled_photo(name: str) -> np.ndarray:
    """One of the offline photos by name (see BUNDLED_TRAIN / BUNDLED_HOLDOUT)."""
    if name in _SKLEARN_PHOTOS:
        from sklearn.datasets import load_sample_image

        return to_float_rgb(load_sample_image(f"{name}.jpg"), name)
    if name in _SKIMAGE_PHOTOS:
        import skimage.data

        if name.startswith("motorcycle_"):
            left, right, _ = skimage.data.stereo_motorcycle()
            return to_float_rgb(left if name.endswith("left") else right, name)
        return to_float_rgb(getattr(skimage.data, name)(), name)
    raise UserError(f"unknown bundled photo {name!r}; choose from {', '.join(_SKIMAGE_PHOTOS + _SKLEARN_PHOTOS)}")


def bundled_photos(split: str = "train") -> list[tuple[str, np.ndarray]]:
    """The bundled photos of one split: ``train`` (9 scikit-image photos), ``holdout`` (2 scikit-learn), ``all``."""
    names = _SPLITS.get(split)
    if names is None:
        raise UserError(f"unknown split {split!r}; use {', '.join(PHOTO_SPLITS)}")
    return [(n, bundled_photo(n)) for n in names]


@dataclass
class ImageSet:
    """A set of decoded images with seeded random crops and flips; ``skipped`` lists files that were not usable."""

    images: list[np.ndarray]
    names: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @classmethod
    def from_folder(cls, root: str | os.PathLike, min_size: int = 2) -> "ImageSet":
        images, names, skipped = [], [], []
        for p in list_images(root):
            try:
                img = load_image(p)
            except UserError as e:
                skipped.append((str(p), str(e)))
                log.warning("skipped %s: %s", p, e)
                continue
            if min(img.shape[:2]) < min_size:
                reason = f"{img.shape[0]}x{img.shape[1]} is smaller than the {min_size}x{min_size} crop"
                skipped.append((str(p), reason))
                log.warning("skipped %s: %s", p, reason)
                continue
            images.append(img)
            names.append(str(p.relative_to(root)))
        if skipped:
            log.warning("%d of %d image files under %s were skipped", len(skipped), len(skipped) + len(images), root)
        if not images:
            raise UserError(f"none of the {len(skipped)} image files under {root} could be used "
                            f"(first: {skipped[0][0]}: {skipped[0][1]}); add readable photos or lower --crop")
        return cls(images, names, skipped)

    @classmethod
    def bundled(cls, split: str = "train") -> "ImageSet":
        pairs = bundled_photos(split)
        return cls([a for _, a in pairs], [n for n, _ in pairs])

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        """Image i as a [3, H, W] tensor."""
        return torch.from_numpy(self.images[i]).permute(2, 0, 1)

    def random_crops(self, rng: np.random.Generator, batch: int, size: int) -> torch.Tensor:
        """[batch, 3, size, size]: a random image, a random crop, a random horizontal and vertical flip, all drawn
        from ``rng``. Images are drawn uniformly, not by area: with few photos, area weighting lets one large,
        featureless photo (the 1411² retina scan) dominate training."""
        out = np.empty((batch, size, size, 3), dtype=np.float32)
        for b in range(batch):
            im = self.images[rng.integers(len(self.images))]
            h, w = im.shape[:2]
            if h < size or w < size:
                raise UserError(f"an image of {h}x{w} is smaller than the crop {size}; lower --crop")
            y, x = rng.integers(0, h - size + 1), rng.integers(0, w - size + 1)
            c = im[y : y + size, x : x + size]
            if rng.random() < 0.5:
                c = c[:, ::-1]
            if rng.random() < 0.5:
                c = c[::-1]
            out[b] = c
        return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()
