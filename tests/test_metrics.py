"""keras_lct.metrics: FID and improved precision/recall against independent computations; the feature networks."""

import importlib.util

import numpy as np
import pytest
import scipy.linalg
import torch
from scipy.spatial.distance import cdist

from keras_lct import metrics
from keras_lct.metrics.feature_networks import _import_torch_fidelity_inception
from feature_network_files import write_random_inception_weights
from feature_network_files import write_tiny_vgg16

# NVIDIA's vgg16.pt exists only as TorchScript, which torch 2.13 deprecates; the stand-in is made the same way.
# NumPy and torch only: nothing here reaches Keras' backend.
pytestmark = [
    pytest.mark.backend_neutral,
    pytest.mark.filterwarnings("ignore:`torch.jit.(script|save|load)` is deprecated:DeprecationWarning"),
]


def random_features(rng, num_samples, dim, shift=0.0):
    mixing = rng.normal(size=(dim, dim))
    return rng.normal(size=(num_samples, dim)) @ mixing + shift


# ---------------------------------------------------------------- Fréchet distance


def pytorch_fid_distance(features_a, features_b):
    """pytorch-fid's calculate_frechet_distance, step by step (scipy's sqrtm, offset when singular)."""
    mu1, mu2 = features_a.mean(0), features_b.mean(0)
    sigma1, sigma2 = np.atleast_2d(np.cov(features_a, rowvar=False)), np.atleast_2d(np.cov(features_b, rowvar=False))
    root = scipy.linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(root).all():
        offset = np.eye(len(mu1)) * 1e-6
        root = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    return (mu1 - mu2) @ (mu1 - mu2) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(root.real)


def test_feature_statistics_are_mean_and_unbiased_covariance():
    features = random_features(np.random.default_rng(0), 50, 6).astype(np.float32)
    mu, sigma = metrics.feature_statistics(features)
    assert mu.dtype == sigma.dtype == np.float64 and mu.shape == (6,) and sigma.shape == (6, 6)
    centered = features.astype(np.float64) - features.astype(np.float64).mean(0)
    np.testing.assert_allclose(mu, features.astype(np.float64).mean(0), rtol=1e-12)
    np.testing.assert_allclose(sigma, centered.T @ centered / 49, rtol=1e-10)


@pytest.mark.parametrize("dim", [1, 8, 32])
def test_frechet_distance_equals_pytorch_fids_formula(dim):
    rng = np.random.default_rng(dim)
    real = random_features(rng, 400, dim)
    fake = random_features(rng, 300, dim, shift=0.7)
    expected = pytorch_fid_distance(real, fake)
    assert metrics.frechet_distance(real, fake) == pytest.approx(expected, rel=1e-6, abs=1e-6)
    statistics = metrics.feature_statistics(real) + metrics.feature_statistics(fake)
    assert metrics.frechet_distance_from_statistics(*statistics) == pytest.approx(expected, rel=1e-6, abs=1e-6)
    assert metrics.frechet_distance(real, real) == pytest.approx(0.0, abs=1e-6)


def test_rank_deficient_covariances_agree_with_pytorch_fid():
    rng = np.random.default_rng(1)
    real, fake = rng.normal(size=(10, 24)), rng.normal(size=(12, 24)) + 0.3  # fewer samples than dims
    # pytorch-fid adds 1e-6 I to both covariances here; its value moves by ~1e-6 * trace.
    assert metrics.frechet_distance(real, fake) == pytest.approx(pytorch_fid_distance(real, fake), rel=1e-6, abs=1e-5)


def test_frechet_distance_of_diagonal_covariances_is_the_closed_form():
    # Commuting covariances: tr sqrt(s1 s2) = sum sqrt(a_i b_i); a singular product needs no offset.
    sigma1, sigma2 = np.diag([1.0, 0.0, 9.0]), np.diag([0.0, 4.0, 4.0])
    mu1, mu2 = np.zeros(3), np.array([1.0, 2.0, 0.0])
    expected = 5.0 + 10.0 + 8.0 - 2 * 6.0
    assert metrics.frechet_distance_from_statistics(mu1, sigma1, mu2, sigma2) == pytest.approx(expected, abs=1e-9)


def test_frechet_distance_rejects_bad_statistics():
    identity = np.eye(2)
    with pytest.raises(ValueError, match="not a covariance matrix"):
        metrics.frechet_distance_from_statistics(np.zeros(2), np.diag([-1.0, 1.0]), np.zeros(2), identity)
    with pytest.raises(ValueError, match="different feature dimensions"):
        metrics.frechet_distance_from_statistics(np.zeros(2), identity, np.zeros(3), np.eye(3))
    with pytest.raises(ValueError, match=r"shapes mu \(2,\) and sigma \(3, 3\)"):
        metrics.frechet_distance_from_statistics(np.zeros(2), np.eye(3), np.zeros(2), identity)
    with pytest.raises(ValueError, match="2-D array"):
        metrics.frechet_distance(np.zeros(10), np.zeros(10))
    with pytest.raises(ValueError, match="at least 2 samples"):
        metrics.feature_statistics(np.zeros((1, 4)))
    with pytest.raises(ValueError, match="NaN or infinite values"):
        metrics.feature_statistics(np.array([[0.0, np.nan], [1.0, 2.0]]))


def test_statistics_files_round_trip_in_pytorch_fids_format(tmp_path):
    mu, sigma = metrics.feature_statistics(random_features(np.random.default_rng(2), 20, 4))
    path = tmp_path / "reference.npz"
    metrics.save_statistics(path, mu, sigma, vgg_features=np.ones((3, 5), np.float32))
    with np.load(path) as contents:
        assert sorted(contents.files) == ["mu", "sigma", "vgg_features"]
        np.testing.assert_array_equal(contents["mu"], mu)
    loaded_mu, loaded_sigma = metrics.load_statistics(path)
    np.testing.assert_array_equal(loaded_mu, mu)
    np.testing.assert_array_equal(loaded_sigma, sigma)
    assert [name for name in tmp_path.iterdir() if name.name.startswith(".")] == []

    np.savez(tmp_path / "other.npz", mean=mu, cov=sigma)
    with pytest.raises(ValueError, match=r"holds the arrays \['cov', 'mean'\], not `mu` and `sigma`"):
        metrics.load_statistics(tmp_path / "other.npz")
    np.savez(tmp_path / "flat.npz", mu=mu, sigma=sigma.ravel())
    with pytest.raises(ValueError, match=r"flat.npz.*sigma \(16,\); expected \(dim,\) and \(dim, dim\)"):
        metrics.load_statistics(tmp_path / "flat.npz")
    (tmp_path / "text.npz").write_text("not numpy")
    with pytest.raises(ValueError, match="not an .npz file"):
        metrics.load_statistics(tmp_path / "text.npz")
    np.save(tmp_path / "single.npy", mu)
    with pytest.raises(ValueError, match="single array"):
        metrics.load_statistics(tmp_path / "single.npy")
    with pytest.raises(FileNotFoundError, match="missing.npz.*`mu` and `sigma`"):
        metrics.load_statistics(tmp_path / "missing.npz")
    with pytest.raises(ValueError, match="shapes"):
        metrics.save_statistics(tmp_path / "bad.npz", mu, sigma[:2])


# ---------------------------------------------------------------- precision and recall


def precision_recall_by_full_matrices(real, fake, k):
    def radii(features):
        distances = cdist(features, features, "sqeuclidean")
        np.fill_diagonal(distances, np.inf)
        return np.sort(distances, axis=1)[:, k - 1]

    between = cdist(real, fake, "sqeuclidean")
    precision = (between <= radii(real)[:, None]).any(axis=0).mean()
    recall = (between <= radii(fake)[None, :]).any(axis=1).mean()
    return {"precision": precision, "recall": recall}


@pytest.mark.parametrize("k", [1, 3, 5])
@pytest.mark.parametrize("batch_size", [1, 7, 1024])
def test_precision_recall_equals_the_full_matrix_computation(k, batch_size):
    rng = np.random.default_rng(k)
    real = rng.normal(size=(60, 6))
    fake = 1.3 * rng.normal(size=(45, 6)) + 0.8
    result = metrics.precision_recall(real, fake, k=k, batch_size=batch_size)
    expected = precision_recall_by_full_matrices(real, fake, k)
    assert result == pytest.approx(expected, abs=0)
    assert 0 < result["precision"] < 1 and 0 < result["recall"]


@pytest.mark.parametrize("batch_size", [3, 11, 100])
def test_ties_and_duplicates_count_as_inside(batch_size):
    rng = np.random.default_rng(3)
    # Small integer coordinates: many duplicates and equal distances, all exact in float64.
    real = rng.integers(0, 4, size=(40, 2)).astype(np.float32)
    fake = rng.integers(1, 6, size=(33, 2)).astype(np.float32)
    result = metrics.precision_recall(real, fake, k=3, batch_size=batch_size)
    assert result == precision_recall_by_full_matrices(real.astype(np.float64), fake.astype(np.float64), 3)
    same = metrics.precision_recall(real, real.copy(), k=3, batch_size=batch_size)
    assert same == {"precision": 1.0, "recall": 1.0}
    # A point on a ball's boundary is inside: real radii are all 1, the fake point is at distance 1.
    corners = np.array([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    result = metrics.precision_recall(corners, np.array([[-1.0, 0.0], [5, 5], [5, 6], [6, 5]]), k=1)
    assert result["precision"] == 0.25


def test_precision_recall_says_what_is_wrong():
    good = np.zeros((10, 4))
    with pytest.raises(ValueError, match="`real_features` must be a 2-D array"):
        metrics.precision_recall(np.zeros(10), good)
    with pytest.raises(ValueError, match=r"different feature dimensions \(4 and 5\)"):
        metrics.precision_recall(good, np.zeros((10, 5)))
    with pytest.raises(ValueError, match="`fake_features` holds NaN"):
        metrics.precision_recall(good, np.full((10, 4), np.inf))
    with pytest.raises(ValueError, match="`fake_features` holds 3 samples; k = 3 needs at least 4.*smaller k"):
        metrics.precision_recall(good, np.zeros((3, 4)), k=3)
    with pytest.raises(ValueError, match="`k` must be an integer >= 1"):
        metrics.precision_recall(good, good, k=0)
    with pytest.raises(ValueError, match="`batch_size` must be an integer >= 1"):
        metrics.precision_recall(good, good, batch_size=0)


# ---------------------------------------------------------------- feature networks


@pytest.fixture(scope="module")
def inception_weights(tmp_path_factory):
    return write_random_inception_weights(tmp_path_factory.mktemp("inception") / "pt_inception.pth")


def test_inception_features_equal_torch_fidelitys_extractor(inception_weights):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(2, 64, 64, 3), dtype=np.uint8)
    inception = metrics.InceptionFeatures(inception_weights, device="cpu")
    # Floats in [-1, 1] that round back to the same uint8 images; one image per network call.
    features = inception(images / 127.5 - 1.0, batch_size=1)
    assert features.shape == (2, 2048) and features.dtype == np.float32 and np.isfinite(features).all()
    assert features.std() > 1e-3  # the generated weights give features at a useful scale

    network_class = _import_torch_fidelity_inception().FeatureExtractorInceptionV3
    direct = network_class("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(inception_weights))
    with torch.no_grad():
        expected = direct(torch.from_numpy(images).permute(0, 3, 1, 2))[0].numpy()
    np.testing.assert_allclose(features, expected, rtol=1e-5, atol=1e-6)


def test_inception_features_need_the_right_file(tmp_path):
    with pytest.raises(FileNotFoundError) as missing:
        metrics.InceptionFeatures(tmp_path / "pt_inception-2015-12-05-6726825d.pth")
    message = str(missing.value)
    assert "pt_inception-2015-12-05-6726825d.pth" in message and metrics.INCEPTION_WEIGHTS_URL in message
    (tmp_path / "text.pth").write_text("not weights")
    with pytest.raises(ValueError, match="does not hold the pytorch-fid Inception weights"):
        metrics.InceptionFeatures(tmp_path / "text.pth")
    torch.save({"fc.weight": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="(?s)does not hold the pytorch-fid Inception weights.*Missing key"):
        metrics.InceptionFeatures(tmp_path / "other.pth")


def test_missing_torch_fidelity_says_how_to_install(monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None if name == "torch_fidelity" else find_spec(name, *args))
    with pytest.raises(ImportError, match="pip install torch-fidelity"):
        _import_torch_fidelity_inception()


def test_vgg16_features_call_the_torchscript_file_like_stylegan2_ada(tmp_path):
    path = tmp_path / "vgg16.pt"
    module = write_tiny_vgg16(path)
    vgg = metrics.VGG16Features(path, device="cpu")
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(5, 12, 12, 3), dtype=np.uint8)
    features = vgg(images, batch_size=2)
    with torch.no_grad():
        expected = module(torch.from_numpy(images).permute(0, 3, 1, 2), return_features=True).numpy()
    assert features.shape == (5, 16) and features.dtype == np.float32
    np.testing.assert_allclose(features, expected, rtol=1e-5, atol=1e-6)  # batches of 2, 2, 1 vs 5
    np.testing.assert_allclose(vgg(images / 127.5 - 1.0), expected, rtol=1e-5, atol=1e-6)
    gray = images[..., :1]
    np.testing.assert_allclose(vgg(gray), vgg(np.repeat(gray, 3, axis=-1)), rtol=1e-6)

    with pytest.raises(ValueError, match=r"channels last; received shape \(5, 3, 12, 12\)"):
        vgg(images.transpose(0, 3, 1, 2))
    with pytest.raises(ValueError, match="uint8 in \\[0, 255\\] or floats"):
        vgg(images.astype(np.int16))


def test_vgg16_features_need_the_right_file(tmp_path):
    with pytest.raises(FileNotFoundError) as missing:
        metrics.VGG16Features(tmp_path / "vgg16.pt")
    assert "vgg16.pt" in str(missing.value) and metrics.VGG16_WEIGHTS_URL in str(missing.value)
    torch.save({"weight": torch.zeros(2)}, tmp_path / "state_dict.pt")
    with pytest.raises(ValueError, match="is not a TorchScript module"):
        metrics.VGG16Features(tmp_path / "state_dict.pt")
    torch.jit.save(torch.jit.script(torch.nn.Flatten(0)), tmp_path / "flatten.pt")
    with pytest.raises((ValueError, RuntimeError)):
        metrics.VGG16Features(tmp_path / "flatten.pt")(np.zeros((2, 4, 4, 3), np.uint8))
