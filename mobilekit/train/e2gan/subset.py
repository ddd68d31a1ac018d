"""Training-subset selection: k-means on image features, keep the samples nearest the centres.

E²GAN fine-tunes a new concept on a small subset of its pairs chosen by clustering; we
cluster the fixed features of the *source* images (``metrics.image_features``), so the
subset covers the visual variety of the data with one representative per cluster.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from mobilekit.errors import ConfigError

logger = logging.getLogger(__name__)


def select_nearest_centres(features: np.ndarray | torch.Tensor, k: int, *, seed: int = 0) -> list[int]:
    """Run k-means with ``k`` clusters and return, per centre, the index of the nearest sample.

    Args:
        features: [N, F] feature matrix.
        k: number of clusters = number of indices returned (1 ≤ k ≤ N).
        seed: k-means initialisation seed.

    Returns:
        ``k`` distinct sample indices, in cluster order. When two centres share a nearest
        sample, the later centre takes its nearest sample not taken yet.

    Example:
        >>> select_nearest_centres(np.array([[0.0], [0.1], [10.0], [10.2]]), 2)  # doctest: +SKIP
        [0, 2]
    """
    from sklearn.cluster import KMeans

    x = np.asarray(features.detach().cpu().numpy() if isinstance(features, torch.Tensor) else features,
                   dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ConfigError(f"features must be a non-empty [N, F] matrix, got shape {x.shape}",
                          where="select_nearest_centres(features)")
    n = x.shape[0]
    if not 1 <= k <= n:
        raise ConfigError(f"k={k} must be between 1 and the number of samples ({n})",
                          where="select_nearest_centres(k)", fix=f"use a subset size of at most {n}")
    km = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(x)
    dist = ((x[None, :, :] - km.cluster_centers_[:, None, :]) ** 2).sum(-1)  # [k, N]
    chosen: list[int] = []
    taken: set[int] = set()
    for c in range(k):
        for i in np.argsort(dist[c], kind="stable"):
            if int(i) not in taken:
                chosen.append(int(i))
                taken.add(int(i))
                break
    return chosen


def select_subset(images: torch.Tensor, k: int, *, seed: int = 0) -> list[int]:
    """Pick ``k`` representative images [N, 3, H, W] in [-1, 1] by k-means on their fixed features.

    Features are standardised per dimension before clustering.
    """
    from mobilekit.train.e2gan.metrics import image_features

    feats = image_features(images).double()
    feats = (feats - feats.mean(0)) / (feats.std(0) + 1e-8)
    idx = select_nearest_centres(feats.numpy(), k, seed=seed)
    logger.info("selected %d of %d samples by k-means", len(idx), images.shape[0])
    return idx


def random_subset(n: int, k: int, *, seed: int = 0) -> list[int]:
    """``k`` distinct indices of ``n`` drawn uniformly (sorted): the control for the k-means subset.

    Raises:
        ConfigError: ``k`` is not between 1 and ``n``.
    """
    if not 1 <= k <= n:
        raise ConfigError(f"k={k} must be between 1 and the number of samples ({n})",
                          where="random_subset(k)", fix=f"use a subset size of at most {n}")
    return sorted(int(i) for i in torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:k])
