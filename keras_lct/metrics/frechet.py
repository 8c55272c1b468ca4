"""The Fréchet distance between two feature sets (FID on Inception features), and its `.npz` files.

A feature set is summarized by the mean `mu` and covariance `sigma` of its
features; the distance between N(mu1, sigma1) and N(mu2, sigma2) is

    ||mu1 - mu2||^2 + tr(sigma1) + tr(sigma2) - 2 tr(sqrtm(sigma1 sigma2)),

pytorch-fid's value (its trace term computed by symmetric eigendecompositions,
see `frechet_distance_from_statistics`); statistics files are interchangeable
with pytorch-fid's.

Reference: Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update Rule
Converge to a Local Nash Equilibrium"; pytorch-fid
(github.com/mseitzer/pytorch-fid); `docs/reference.md` "Evaluation".
"""

import os

import numpy as np

from keras_lct.saving import atomic_path

# Eigenvalues below -NEGATIVE_TOLERANCE * the largest mean a matrix that is not a covariance.
NEGATIVE_TOLERANCE = 1e-6


def feature_statistics(features):
    """The mean and covariance of a feature set, in float64.

    Args:
        features: array `(num_samples, dim)` of finite values, at least 2 rows.

    Returns:
        `(mu, sigma)`: float64 arrays `(dim,)` and `(dim, dim)`; the
        covariance divides by `num_samples - 1`, like pytorch-fid's `np.cov`.

    Example:
    ```python
    mu, sigma = feature_statistics(inception(images))
    ```
    """
    features = _check_features("features", features, minimum_rows=2)
    return features.mean(axis=0), np.atleast_2d(np.cov(features, rowvar=False))


def frechet_distance(features_a, features_b):
    """The Fréchet distance between the Gaussians fitted to two feature sets.

    Args:
        features_a, features_b: arrays `(num_samples, dim)`, one `dim`.

    Returns:
        the distance, a Python float (FID when the features are the
        pytorch-fid Inception's pool3 features).

    Example:
    ```python
    fid = frechet_distance(inception(real_images), inception(generated_images))
    ```

    Reference: pytorch-fid's `calculate_frechet_distance`.
    """
    return frechet_distance_from_statistics(*feature_statistics(features_a), *feature_statistics(features_b))


def frechet_distance_from_statistics(mu1, sigma1, mu2, sigma2):
    """The Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), pytorch-fid's formula.

    The value is pytorch-fid's; only `tr(sqrtm(sigma1 @ sigma2))` is computed
    another way. sigma1 @ sigma2 is similar to `R sigma2 R` with R the
    symmetric square root of sigma1, so the trace is the sum of the square
    roots of the eigenvalues of that symmetric positive semi-definite
    matrix: two symmetric eigendecompositions instead of scipy's `sqrtm` of
    a non-symmetric product, which needs no offset for singular products
    and takes seconds rather than minutes at dim 2048 on two CPU cores.

    Args:
        mu1, mu2: means `(dim,)`.
        sigma1, sigma2: covariances `(dim, dim)`.

    Returns:
        the distance, a Python float.

    Raises:
        ValueError: shapes that do not match, non-finite values, or
            covariances that are not positive semi-definite.

    Example:
    ```python
    mu, sigma = load_statistics("celeba_hq_256_inception.npz")
    fid = frechet_distance_from_statistics(*feature_statistics(features), mu, sigma)
    ```

    Reference: pytorch-fid's `calculate_frechet_distance`.
    """
    mu1, sigma1 = _check_statistics(mu1, sigma1, "first")
    mu2, sigma2 = _check_statistics(mu2, sigma2, "second")
    if mu1.shape != mu2.shape:
        raise ValueError(
            f"The two sets of statistics have different feature dimensions ({mu1.shape[0]} and "
            f"{mu2.shape[0]}): both must come from the same feature network and layer."
        )
    trace_sqrt_product = _trace_sqrt_product(sigma1, sigma2)
    difference = mu1 - mu2
    return float(difference @ difference + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt_product)


def _trace_sqrt_product(sigma1, sigma2):
    root = _symmetric_sqrt(sigma1, "sigma1")
    return float(np.sqrt(_psd_eigenvalues(root @ sigma2 @ root, "sigma1 @ sigma2")).sum())


def _symmetric_sqrt(matrix, name):
    eigenvalues, eigenvectors = np.linalg.eigh(matrix)
    eigenvalues = _clip_psd(eigenvalues, name)
    return (eigenvectors * np.sqrt(eigenvalues)) @ eigenvectors.T


def _psd_eigenvalues(matrix, name):
    return _clip_psd(np.linalg.eigvalsh((matrix + matrix.T) / 2), name)


def _clip_psd(eigenvalues, name):
    scale = max(float(np.abs(eigenvalues).max(initial=0.0)), np.finfo(np.float64).tiny)
    if eigenvalues.min(initial=0.0) < -NEGATIVE_TOLERANCE * scale:
        raise ValueError(
            f"{name} has a negative eigenvalue ({eigenvalues.min():.3g}, largest {scale:.3g}): it is not a "
            "covariance matrix. Check that the statistics are means and covariances of real features."
        )
    return np.clip(eigenvalues, 0.0, None)


def save_statistics(path, mu, sigma, **arrays):
    """Writes `mu` and `sigma` (and any further named arrays) to an `.npz` file, atomically.

    The file is pytorch-fid's format (keys `mu` and `sigma`): pytorch-fid
    reads it, and `load_statistics` reads pytorch-fid's files.

    Args:
        path: the file to write; should end in `.npz`.
        mu: mean `(dim,)`.
        sigma: covariance `(dim, dim)`.
        **arrays: more arrays stored beside them, e.g. `vgg_features=...`.

    Example:
    ```python
    save_statistics("celeba_hq_256_inception.npz", *feature_statistics(features))
    ```
    """
    mu, sigma = _check_statistics(mu, sigma, "given", source=path)
    with atomic_path(path) as temporary:
        with open(temporary, "wb") as file:
            np.savez(file, mu=mu, sigma=sigma, **arrays)


def load_statistics(path):
    """Reads `mu` and `sigma` from an `.npz` file (pytorch-fid's format, or `save_statistics`').

    Args:
        path: the `.npz` file.

    Returns:
        `(mu, sigma)` as float64 arrays `(dim,)` and `(dim, dim)`.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not an `.npz` file, keys `mu` / `sigma` missing, or
            shapes that are not `(dim,)` and `(dim, dim)`.

    Example:
    ```python
    mu, sigma = load_statistics("fid_stats_celeba_hq_256.npz")
    ```
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"No statistics file at {path!r}. It should be an .npz file with arrays `mu` and `sigma` "
            "(pytorch-fid's format; `keras_lct.metrics.save_statistics` and `recipes/evaluate.py "
            "--save-reference` write one)."
        )
    try:
        contents = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        raise ValueError(f"{path!r} is not an .npz file of statistics (mu, sigma): {error}") from error
    if not isinstance(contents, np.lib.npyio.NpzFile):
        raise ValueError(f"{path!r} holds a single array (an .npy file), not an .npz file with `mu` and `sigma`.")
    with contents:
        keys = sorted(contents.files)
        if "mu" not in keys or "sigma" not in keys:
            raise ValueError(
                f"{path!r} holds the arrays {keys}, not `mu` and `sigma`: it is not a statistics file in "
                "pytorch-fid's format."
            )
        mu, sigma = contents["mu"], contents["sigma"]
    return _check_statistics(mu, sigma, "stored", source=path)


def _check_statistics(mu, sigma, which, source=None):
    mu, sigma = np.asarray(mu, np.float64), np.asarray(sigma, np.float64)
    where = f" in {os.fspath(source)!r}" if source is not None else ""
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(
            f"The {which} statistics{where} have shapes mu {mu.shape} and sigma {sigma.shape}; expected "
            "(dim,) and (dim, dim)."
        )
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise ValueError(f"The {which} statistics{where} hold NaN or infinite values.")
    return mu, sigma


def _check_features(name, features, minimum_rows):
    """float64 copy of a 2-D finite feature array with at least `minimum_rows` rows."""
    features = np.asarray(features)
    if features.ndim != 2:
        raise ValueError(
            f"`{name}` must be a 2-D array (num_samples, dim); received shape {features.shape}. "
            "Flatten the features of each sample into one row."
        )
    if not (np.issubdtype(features.dtype, np.floating) or np.issubdtype(features.dtype, np.integer)):
        raise ValueError(f"`{name}` must hold real numbers; received dtype {features.dtype}.")
    if features.shape[0] < minimum_rows:
        raise ValueError(f"`{name}` needs at least {minimum_rows} samples (rows); received {features.shape[0]}.")
    features = features.astype(np.float64)
    if not np.isfinite(features).all():
        raise ValueError(
            f"`{name}` holds NaN or infinite values (in {int((~np.isfinite(features)).any(axis=1).sum())} "
            "rows): the generated images or the feature network produced them."
        )
    return features
