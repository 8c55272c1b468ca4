"""Improved precision and recall of a generated set against a real set (Kynkäänniemi et al. 2019).

Each sample of a set gets a ball whose radius is the distance to its k-th
nearest other sample of the same set; the union of the balls estimates the
set's manifold. Precision is the fraction of generated samples inside the
real manifold, recall the fraction of real samples inside the generated one.
The paper reports recall with k = 3 on NVIDIA's VGG16 features
(`keras_lct.metrics.VGG16Features`).

Reference: Kynkäänniemi et al. 2019, "Improved Precision and Recall Metric
for Assessing Generative Models"; `docs/reference.md` "Evaluation".
"""

import numpy as np

from keras_lct._validation import check_int
from keras_lct.metrics.frechet import _check_features


def precision_recall(real_features, fake_features, k=3, batch_size=1024):
    """Improved precision and recall, computed in row blocks of the pairwise distance matrices.

    A sample lies inside a ball when its distance to the center is at most
    the radius (ties count as inside); a sample's own distance (zero) is
    never its neighbour, but duplicates of it are. Distances are Euclidean,
    in float64; only `batch_size` rows of a distance matrix exist at a time,
    so 50k x 50k features take about `batch_size * 50k * 8` bytes beyond
    the float64 copies of the two feature sets.

    Args:
        real_features: array `(num_real, dim)`, at least `k + 1` rows.
        fake_features: array `(num_fake, dim)` of the generated samples, at
            least `k + 1` rows.
        k: the neighbourhood size that sets the radii (3, as in the paper).
        batch_size: rows of a distance matrix computed at once.

    Returns:
        `{"precision": float, "recall": float}`, both in [0, 1].

    Raises:
        ValueError: inputs that are not 2-D, feature dimensions that
            differ, NaN or infinite values, or fewer than `k + 1` samples.

    Example:
    ```python
    vgg = VGG16Features("weights/vgg16.pt")
    scores = precision_recall(vgg(real_images), vgg(generated_images), k=3)
    scores["recall"]
    ```

    Reference: Kynkäänniemi et al. 2019, section 2 (improved precision and recall).
    """
    k = check_int("k", k, minimum=1)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    real = _check_set("real_features", real_features, k)
    fake = _check_set("fake_features", fake_features, k)
    if real.shape[1] != fake.shape[1]:
        raise ValueError(
            f"`real_features` and `fake_features` have different feature dimensions ({real.shape[1]} and "
            f"{fake.shape[1]}): extract both with the same feature network."
        )
    real_radii = _kth_neighbour_squared_distances(real, k, batch_size)
    fake_radii = _kth_neighbour_squared_distances(fake, k, batch_size)
    fake_inside_real = np.zeros(len(fake), dtype=bool)
    real_inside_fake = np.zeros(len(real), dtype=bool)
    real_norms = _squared_norms(real)
    for start in range(0, len(fake), batch_size):
        rows = slice(start, start + batch_size)
        distances = _squared_distances(fake[rows], _squared_norms(fake[rows]), real, real_norms)
        fake_inside_real[rows] = (distances <= real_radii[None, :]).any(axis=1)
        real_inside_fake |= (distances <= fake_radii[rows, None]).any(axis=0)
    return {"precision": float(fake_inside_real.mean()), "recall": float(real_inside_fake.mean())}


def _check_set(name, features, k):
    features = np.asarray(features)
    if features.ndim == 2 and features.shape[0] < k + 1:
        raise ValueError(
            f"`{name}` holds {features.shape[0]} samples; k = {k} needs at least {k + 1} (each sample's radius "
            f"is the distance to its {k}-th nearest other sample). Pass more samples or a smaller k."
        )
    return _check_features(name, features, minimum_rows=k + 1)


def _squared_norms(features):
    return np.einsum("ij,ij->i", features, features)


def _squared_distances(rows, row_norms, columns, column_norms):
    """||a||^2 - 2 a.b + ||b||^2 for every pair, clipped at 0 (rounding can make it negative)."""
    distances = row_norms[:, None] - 2.0 * (rows @ columns.T) + column_norms[None, :]
    return np.maximum(distances, 0.0, out=distances)


def _kth_neighbour_squared_distances(features, k, batch_size):
    """Squared distance from every sample to its k-th nearest other sample of the same set."""
    norms = _squared_norms(features)
    radii = np.empty(len(features))
    for start in range(0, len(features), batch_size):
        stop = min(start + batch_size, len(features))
        distances = _squared_distances(features[start:stop], norms[start:stop], features, norms)
        distances[np.arange(stop - start), np.arange(start, stop)] = np.inf  # not its own neighbour
        distances.partition(k - 1, axis=1)
        radii[start:stop] = distances[:, k - 1]
    return radii
