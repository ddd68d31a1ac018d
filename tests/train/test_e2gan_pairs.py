"""The on-disk paired-data format: round trip and clear errors for bad folders."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mobilekit.errors import ConfigError
from mobilekit.train.e2gan.pairs import PairDataset, read_records, write_pair


def _img(h=16, w=16, v=0.5):
    return np.full((h, w, 3), v, dtype=np.float32)


def _dataset(tmp_path, n=3):
    d = tmp_path / "pairs"
    for i in range(n):
        write_pair(d, f"p{i}", _img(v=0.1 * i), _img(v=1 - 0.1 * i), prompt="make it sepia",
                   concept="sepia" if i < 2 else "blur", extra={"seed": i})
    return d


def test_roundtrip(tmp_path):
    d = _dataset(tmp_path)
    ds = PairDataset(d)
    assert len(ds) == 3 and ds.sources.shape == (3, 3, 16, 16)
    assert ds.prompts == ["make it sepia"] * 3
    assert ds.records[1].extra == {"seed": 1}
    assert abs(float(ds.sources[1].mean()) - (0.1 * 2 - 1)) < 0.02
    assert len(PairDataset(d, concept="sepia")) == 2
    assert PairDataset(d, size=8).sources.shape[-1] == 8
    with pytest.raises(ConfigError) as exc:
        PairDataset(d, concept="hulk")
    assert "blur" in str(exc.value) and "sepia" in str(exc.value)


def test_not_a_pairs_folder(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        PairDataset(tmp_path / "missing")
    (tmp_path / "photos").mkdir()
    with pytest.raises(ConfigError) as exc:
        PairDataset(tmp_path / "photos")
    assert "dataset.json" in str(exc.value) and str(tmp_path / "photos") in str(exc.value)


def test_missing_prompt_names_the_file(tmp_path):
    d = _dataset(tmp_path)
    meta = d / "meta" / "p1.json"
    rec = json.loads(meta.read_text())
    del rec["prompt"]
    meta.write_text(json.dumps(rec))
    with pytest.raises(ConfigError) as exc:
        read_records(d)
    assert "'prompt'" in str(exc.value) and "p1.json" in str(exc.value)
    with pytest.raises(ConfigError, match="empty prompt"):
        write_pair(d, "p9", _img(), _img(), prompt=" ", concept="x")


def test_mismatched_image_sizes(tmp_path):
    d = _dataset(tmp_path)
    from PIL import Image

    Image.fromarray(np.zeros((8, 16, 3), dtype=np.uint8)).save(d / "target" / "p2.png")
    with pytest.raises(ConfigError) as exc:
        PairDataset(d)
    assert "sizes differ" in str(exc.value) and "p2.json" in str(exc.value)
    with pytest.raises(ConfigError, match="sizes differ"):
        write_pair(d, "p8", _img(16, 16), _img(8, 16), prompt="x", concept="x")


def test_images_of_different_sizes_need_resize_and_missing_file(tmp_path):
    d = _dataset(tmp_path, n=1)
    write_pair(d, "q", _img(24, 24), _img(24, 24), prompt="x", concept="sepia")
    with pytest.raises(ConfigError, match="pass size="):
        PairDataset(d)
    assert len(PairDataset(d, size=16)) == 2
    (d / "source" / "q.png").unlink()
    with pytest.raises(ConfigError, match="source image"):
        PairDataset(d, size=16)
