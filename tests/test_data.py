import numpy as np
import pytest
import torch

from conftest import write_png
from ncis_deploy.data import BUNDLED_HOLDOUT, BUNDLED_TRAIN, ImageSet, bundled_photos, load_image, to_float_rgb
from ncis_deploy.errors import UserError


def test_folder_is_recursive_and_converts_modes(tmp_path, image_dir):
    from PIL import Image

    rgb = (np.random.default_rng(0).random((40, 50, 3)) * 255).astype(np.uint8)
    write_png(image_dir / "grey.png", rgb[:, :, 0])
    write_png(image_dir / "deep" / "rgba.png", np.dstack([rgb, np.full(rgb.shape[:2], 7, np.uint8)]))
    Image.fromarray(rgb).convert("P").save(image_dir / "palette.png")
    Image.fromarray(rgb).save(image_dir / "x.bmp")
    Image.fromarray(rgb).save(image_dir / "x.webp", lossless=True)
    grey16 = (np.arange(40 * 50, dtype=np.uint16).reshape(40, 50) * 30)
    Image.fromarray(grey16).save(image_dir / "grey16.png")
    (image_dir / "notes.txt").write_text("not an image")

    s = ImageSet.from_folder(image_dir)
    assert len(s) == 9 and not s.skipped
    for im in s.images:
        assert im.dtype == np.float32 and im.ndim == 3 and im.shape[2] == 3
        assert 0 <= im.min() and im.max() <= 1
    grey = s.images[s.names.index("grey.png")]
    assert np.array_equal(grey[..., 0], grey[..., 2]) and np.allclose(grey[..., 0], rgb[:, :, 0] / 255)
    assert np.allclose(s.images[s.names.index("deep/rgba.png")], rgb / 255)
    g16 = s.images[s.names.index("grey16.png")]
    assert np.allclose(g16[..., 1], grey16 / 65535, atol=1e-6)
    assert np.allclose(s.images[s.names.index("x.webp")], rgb / 255)


def test_corrupt_image_is_skipped_and_counted(image_dir, caplog):
    (image_dir / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    good = (image_dir / "a.png").read_bytes()
    (image_dir / "truncated.png").write_bytes(good[: len(good) // 3])
    s = ImageSet.from_folder(image_dir)
    assert len(s) == 3
    assert sorted(p.split("/")[-1] for p, _ in s.skipped) == ["broken.png", "truncated.png"]
    assert "2 of 5 image files" in caplog.text


def test_folder_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        ImageSet.from_folder(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no images"):
        ImageSet.from_folder(tmp_path / "empty")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.jpg").write_bytes(b"nope")
    with pytest.raises(UserError, match="none of the 1 image files"):
        ImageSet.from_folder(tmp_path / "bad")


def test_too_small_images_are_skipped(image_dir):
    s = ImageSet.from_folder(image_dir, min_size=90)
    assert len(s) == 2 and len(s.skipped) == 1 and "smaller than" in s.skipped[0][1]


def test_random_crops_are_seeded_and_flip(image_dir):
    s = ImageSet.from_folder(image_dir)
    a = s.random_crops(np.random.default_rng([0, 5]), 16, 32)
    b = s.random_crops(np.random.default_rng([0, 5]), 16, 32)
    c = s.random_crops(np.random.default_rng([0, 6]), 16, 32)
    assert a.shape == (16, 3, 32, 32) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    # every crop is a (possibly flipped) window of one of the images
    ims = [torch.from_numpy(im).permute(2, 0, 1) for im in s.images]
    for crop in a[:4]:
        variants = [crop, crop.flip(-1), crop.flip(-2), crop.flip(-1).flip(-2)]
        assert any(torch.equal(v, im[:, y:y + 32, x:x + 32]) for v in variants for im in ims
                   for y in range(im.shape[1] - 31) for x in range(im.shape[2] - 31))


def test_bundled_photos_split_by_image():
    assert not set(BUNDLED_TRAIN) & set(BUNDLED_HOLDOUT)
    hold = bundled_photos("holdout")
    assert [n for n, _ in hold] == ["china", "flower"]
    assert all(a.shape == (427, 640, 3) for _, a in hold)
    assert len(BUNDLED_TRAIN) == 9
    with pytest.raises(UserError):
        bundled_photos("test")


def test_to_float_rgb_rejects_odd_layouts():
    with pytest.raises(UserError, match="unsupported"):
        to_float_rgb(np.zeros((4, 4, 5), np.uint8))
    with pytest.raises(UserError, match="cannot decode"):
        load_image(__file__)
