import hashlib

import numpy as np
import pytest
import torch

from unitok.eval.metrics.fid import FeatureStats, fid_from_features, frechet_distance
from unitok.eval.metrics.inception import WEIGHTS_ENV, WEIGHTS_FILE, InceptionFeatures, resolve_weights, sha256_of


def _gaussian_features(n, d, seed, shift=0.0):
    mix = torch.randn(d, d, generator=torch.Generator().manual_seed(1234)) / d**0.5  # one covariance for all seeds
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64) @ mix.double() + shift


@pytest.mark.parametrize("method", ["sqrtm", "eigh"])
def test_frechet_distance_of_diagonal_gaussians_has_the_closed_form(method):
    a, b = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, -1.0, 2.0])
    expected = ((np.sqrt(a) - np.sqrt(b)) ** 2).sum() + ((mu1 - mu2) ** 2).sum()  # 4 + 1 + 0 + 1 + 4
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b), method=method) == pytest.approx(expected, rel=1e-10)
    assert frechet_distance(mu1, np.diag(a), mu1, np.diag(a), method=method) == pytest.approx(0, abs=1e-9)


@pytest.mark.filterwarnings("ignore:The `disp` argument is deprecated:DeprecationWarning")
def test_routes_agree_with_each_other_and_with_pytorch_fid():
    from pytorch_fid.fid_score import calculate_frechet_distance

    s1 = FeatureStats(32).update(_gaussian_features(400, 32, 0)).compute()
    s2 = FeatureStats(32).update(_gaussian_features(300, 32, 1, shift=0.3)).compute()
    reference = calculate_frechet_distance(*s1, *s2)
    assert frechet_distance(*s1, *s2) == pytest.approx(reference, rel=1e-9)
    assert frechet_distance(*s1, *s2, method="eigh") == pytest.approx(reference, rel=1e-8)


def test_singular_covariances_are_handled():
    # 6 samples in 24 dims: both covariances have rank 5.
    s1 = FeatureStats(24).update(_gaussian_features(6, 24, 2)).compute()
    s2 = FeatureStats(24).update(_gaussian_features(6, 24, 3, shift=0.5)).compute()
    exact = frechet_distance(*s1, *s2, method="eigh")
    assert np.isfinite(exact) and exact > 0
    assert frechet_distance(*s1, *s2) == pytest.approx(exact, rel=1e-3)
    # Identical rank-deficient Gaussians are at distance 0 (up to sqrt of rounding-level eigenvalues).
    assert frechet_distance(*s1, *s1, method="eigh") == pytest.approx(0, abs=1e-5)


def test_sqrtm_route_retries_with_an_eps_offset_when_not_finite(monkeypatch):
    from scipy import linalg

    real_sqrtm, seen = linalg.sqrtm, []

    def flaky_sqrtm(a):
        seen.append(a.copy())
        return np.full_like(a, np.nan) if len(seen) == 1 else real_sqrtm(a)

    monkeypatch.setattr(linalg, "sqrtm", flaky_sqrtm)
    a, b = np.diag([1.0, 4.0]), np.diag([4.0, 1.0])
    assert frechet_distance(np.zeros(2), a, np.zeros(2), b, eps=1e-3) == pytest.approx(2.0, abs=1e-2)
    assert len(seen) == 2 and np.allclose(seen[1], (a + 1e-3 * np.eye(2)) @ (b + 1e-3 * np.eye(2)))


def test_sqrtm_route_rejects_a_large_imaginary_part(monkeypatch):
    from scipy import linalg

    monkeypatch.setattr(linalg, "sqrtm", lambda a: np.eye(a.shape[0]) * (1 + 0.5j))
    with pytest.raises(ValueError, match="imaginary"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), np.eye(2))
    monkeypatch.setattr(linalg, "sqrtm", lambda a: np.eye(a.shape[0]) * (1 + 1e-9j))
    assert frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), np.eye(2)) == pytest.approx(0, abs=1e-12)


def test_frechet_distance_rejects_mismatched_shapes_and_unknown_method():
    with pytest.raises(ValueError, match="covariances"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="unknown method"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), np.eye(2), method="svd")


def test_feature_stats_do_not_depend_on_batching_or_ranks():
    x = _gaussian_features(103, 16, 4, shift=2.0)
    whole = FeatureStats(16).update(x)
    batched = FeatureStats(16)
    for chunk in x.split(7):
        batched.update(chunk)
    halves = FeatureStats(16).update(x[:50]).merge(FeatureStats(16).update(x[50:]))
    mu, sigma = whole.compute()
    np.testing.assert_allclose(mu, x.mean(0).numpy(), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(x.numpy(), rowvar=False), rtol=1e-9, atol=1e-12)
    for other in (batched, halves):
        assert other.n == 103
        np.testing.assert_allclose(other.compute()[0], mu, rtol=1e-12)
        np.testing.assert_allclose(other.compute()[1], sigma, rtol=1e-9, atol=1e-12)
    assert fid_from_features(whole, batched) == pytest.approx(0, abs=1e-6)
    with pytest.raises(ValueError, match=r"\(N, 16\)"):
        whole.update(torch.zeros(3, 8))
    with pytest.raises(ValueError, match="at least 2"):
        FeatureStats(4).update(torch.zeros(1, 4)).compute()


def test_fid_from_features_grows_with_a_shift():
    real = FeatureStats(8).update(_gaussian_features(500, 8, 5))
    near = FeatureStats(8).update(_gaussian_features(500, 8, 6, shift=0.1))
    far = FeatureStats(8).update(_gaussian_features(500, 8, 7, shift=1.0))
    assert fid_from_features(real, near) < fid_from_features(real, far)
    assert fid_from_features(real, far) == pytest.approx(8.0, rel=0.15)  # |mu diff|^2 = 8 dominates


def test_missing_weights_error_names_file_url_and_env_var(tmp_path, monkeypatch):
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path / "nowhere.pth"))
    with pytest.raises(FileNotFoundError) as info:
        InceptionFeatures()
    message = str(info.value)
    assert WEIGHTS_FILE in message and "github.com/mseitzer/pytorch-fid" in message and WEIGHTS_ENV in message
    with pytest.raises(FileNotFoundError, match="weights_path="):
        resolve_weights(tmp_path / WEIGHTS_FILE)


def test_weights_path_resolution_and_sha256(tmp_path, monkeypatch):
    weights = tmp_path / WEIGHTS_FILE
    weights.write_bytes(b"not really weights")
    assert resolve_weights(weights) == weights
    monkeypatch.setenv(WEIGHTS_ENV, str(weights))
    assert resolve_weights() == weights
    assert sha256_of(weights) == hashlib.sha256(b"not really weights").hexdigest()


def test_random_init_extractor_gives_pool3_features_of_256px_images():
    torch.manual_seed(0)
    net = InceptionFeatures(random_init=True)
    assert net.weights_sha256 is None and not any(p.requires_grad for p in net.parameters())
    images = torch.rand(2, 3, 256, 256)
    features = net(images)
    assert features.shape == (2, 2048) and torch.isfinite(features).all()
    assert not torch.equal(features[0], features[1])
    assert features.abs().mean() > 1e-2  # He init keeps the scale (torch's default init gives ~1e-8: FID = noise)
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        net(images[:, :1])
