"""k-means subset selection keeps the samples nearest the cluster centres."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mobilekit.errors import ConfigError
from mobilekit.train.e2gan.subset import random_subset, select_nearest_centres, select_subset


def test_picks_the_point_at_each_centre():
    # three well separated clusters; each is a point at its centre plus a symmetric ring,
    # so the k-means centre is the centre point and it is the nearest sample.
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [20.0, 0.0], [0.0, 20.0]])
    pts, centre_idx = [], []
    for c in centres:
        ring = rng.normal(size=(4, 2))
        centre_idx.append(len(pts))
        pts.append(c)
        pts.extend(c + ring)
        pts.extend(c - ring)
    got = select_nearest_centres(np.stack(pts), 3, seed=0)
    assert sorted(got) == sorted(centre_idx)


def test_duplicates_are_resolved_and_k_is_checked():
    x = np.zeros((3, 2))
    got = select_nearest_centres(x + np.arange(3)[:, None] * 1e-9, 3)
    assert sorted(got) == [0, 1, 2]
    with pytest.raises(ConfigError, match="k=4"):
        select_nearest_centres(x, 4)
    with pytest.raises(ConfigError, match=r"\[N, F\]"):
        select_nearest_centres(np.zeros(3), 1)


def test_select_subset_on_images_returns_distinct_indices():
    torch.manual_seed(0)
    imgs = torch.cat([torch.full((5, 3, 16, 16), v) + 0.01 * torch.randn(5, 3, 16, 16) for v in (-0.8, 0.0, 0.8)])
    got = select_subset(imgs, 3, seed=0)
    assert len(set(got)) == 3
    assert sorted(i // 5 for i in got) == [0, 1, 2]  # one per brightness cluster


def test_random_subset_is_the_kmeans_size_distinct_and_seeded():
    images = torch.rand(20, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    km = select_subset(images, 6, seed=0)
    rnd = random_subset(20, len(km), seed=0)
    assert len(rnd) == len(set(rnd)) == len(km) and all(0 <= i < 20 for i in rnd)
    assert rnd == random_subset(20, 6, seed=0) and rnd != random_subset(20, 6, seed=1)
    with pytest.raises(ConfigError):
        random_subset(5, 6)
