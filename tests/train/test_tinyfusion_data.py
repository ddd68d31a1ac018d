"""Data sources: image folders, pre-computed latents, digits, and the channel folding."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mobilekit.errors import ConfigError
from mobilekit.train.tinyfusion.data import _fold, load_data, to_images


def test_image_folder_gives_class_labels_by_sorted_folder_name(tmp_path: Path) -> None:
    from PIL import Image

    for cls, value in (("b_dark", 10), ("a_bright", 240)):
        (tmp_path / cls).mkdir()
        for i in range(3):
            Image.new("RGB", (12, 12), (value, value, value)).save(tmp_path / cls / f"{i}.png")
    (tmp_path / "a_bright" / "notes.txt").write_text("ignored")
    src = load_data(tmp_path, (4, 8, 8))
    assert src.x.shape == (6, 4, 8, 8) and src.num_classes == 2
    assert src.labels is not None and src.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert float(src.x[:3].mean()) > 0.8 and float(src.x[3:].mean()) < -0.8  # a_bright is class 0


def test_latents_file_round_trip_and_shape_check(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    lat = torch.randn(5, 4, 8, 8)
    save_file({"latents": lat, "labels": torch.tensor([0, 1, 2, 1, 0])}, str(tmp_path / "lat.safetensors"))
    src = load_data(tmp_path / "lat.safetensors", (4, 8, 8))
    torch.testing.assert_close(src.x, lat)
    assert src.num_classes == 3
    with pytest.raises(ConfigError, match=r"latents have shape \(4, 8, 8\) but the model takes \(4, 16, 16\)"):
        load_data(tmp_path / "lat.safetensors", (4, 16, 16))
    save_file({"x": lat}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ConfigError, match="no 'latents' tensor"):
        load_data(tmp_path / "bad.safetensors", (4, 8, 8))


def test_folding_into_square_channel_counts_is_lossless() -> None:
    img = torch.rand(2, 1, 8, 8) * 2 - 1
    folded = _fold(img, (4, 8, 8))
    assert folded.shape == (2, 4, 8, 8)
    big = F.interpolate(img, size=(16, 16), mode="bilinear", align_corners=False)
    torch.testing.assert_close(to_images(folded), big)


def test_split_is_deterministic_and_disjoint() -> None:
    src = load_data("digits", (1, 8, 8))
    a, b = src.split(0.2, seed=0)
    a2, b2 = src.split(0.2, seed=0)
    assert len(a) + len(b) == len(src) and len(b) == 359
    torch.testing.assert_close(a.x, a2.x)
    torch.testing.assert_close(b.x, b2.x)
