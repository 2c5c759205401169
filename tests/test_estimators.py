"""Estimators against closed forms, naive references and invariances."""

import math

import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree
from scipy.special import digamma

from companion.errors import CompanionError
from companion.method import criteria
from companion.method.estimators import (
    angular,
    bucket,
    bucket_mm,
    cosine,
    knn,
    knn_unit,
    renyi,
    rms,
    token_rms,
)


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# --- KNN -----------------------------------------------------------------------------------------


def test_knn_gaussian_approaches_differential_entropy():
    mix = torch.tensor([[1.0, 0.0, 0.0], [0.5, 1.5, 0.0], [-0.3, 0.4, 0.7]])
    d = 3
    true = 0.5 * math.log((2 * math.pi * math.e) ** d * torch.linalg.det(mix @ mix.T).item())
    k = 10
    estimate = knn(randn(4, 2000, d) @ mix.T, k=k).mean().item()
    # log k in place of digamma(k) biases the estimate low by about log k − ψ(k) = 0.05 nats
    assert estimate == pytest.approx(true - (math.log(k) - digamma(k)), abs=0.08)


def test_knn_matches_kdtree_reference():
    x = randn(3, 200, 5, seed=1)
    k = 7
    expected = []
    for sample in x.double().numpy():
        r_k = cKDTree(sample).query(sample, k=k + 1)[0][:, -1]  # column 0 is the point itself
        n, d = sample.shape
        expected.append(
            d * np.mean(np.log(r_k + 1e-10))
            + d / 2 * math.log(math.pi)
            - math.lgamma(d / 2 + 1)
            + math.log(n)
            - math.log(k)
        )
    torch.testing.assert_close(knn(x, k=k), torch.tensor(expected, dtype=torch.float32))


@pytest.mark.parametrize("scale", [0.01, 3.0, 250.0])
def test_knn_shifts_by_d_log_scale_and_ignores_translation(scale):
    x = randn(2, 100, 8, seed=2)
    base = knn(x, k=5)
    torch.testing.assert_close(knn(scale * x + 40.0, k=5), base + 8 * math.log(scale), rtol=0, atol=2e-4)


def knn_float64_reference(x: torch.Tensor, k: int) -> torch.Tensor:
    """The KNN formula on exact float64 distances from differences (no Gram matrix), sorted."""
    x = x.double()
    _, n, d = x.shape
    dist = torch.cdist(x, x, compute_mode="donot_use_mm_for_euclid_dist")
    dist.diagonal(dim1=1, dim2=2).fill_(math.inf)
    r_k = dist.sort(dim=2).values[..., k - 1]
    const = d / 2 * math.log(math.pi) - math.lgamma(d / 2 + 1) + math.log(n) - math.log(k)
    return d * torch.log(r_k + 1e-10).mean(dim=1) + const


@pytest.mark.parametrize("k", [1, 3, 8, 9])
def test_knn_identical_tokens_at_large_norm_have_distance_zero(k):
    # hidden-state-like norms (~1e3); tokens 8..15 are eight copies of one token, 20..23 copies of token 30,
    # so a copy's k-th neighbour is another copy (r_k = 0) for k < 8 and a distinct token for k = 8, 9
    x = randn(2, 64, 32, seed=3) * 200
    x[:, 8:16] = x[:, 8:9]
    x[:, 20:24] = x[:, 30:31]
    assert x.norm(dim=2).mean() > 1000
    expected = knn_float64_reference(x, k)
    torch.testing.assert_close(knn(x, k=k).double(), expected, rtol=0, atol=1e-3)


def test_knn_duplicate_points_stay_finite():
    x = torch.zeros(1, 10, 2)
    assert torch.isfinite(knn(x, k=3)).all()


@pytest.mark.parametrize("k", [0, 10, 11])
def test_knn_rejects_k_out_of_range(k):
    with pytest.raises(ValueError):
        knn(randn(1, 10, 2), k=k)


# --- Bucket --------------------------------------------------------------------------------------


def test_bucket_uniform_over_bins_is_d_log_bins():
    bins, d, repeats = 20, 4, 3
    centres = (torch.arange(bins) + 0.5) / bins
    x = centres.repeat(repeats)[:, None].expand(-1, d)
    x = torch.stack([x, 5 * x - 2])  # second sample: other range, same bins
    torch.testing.assert_close(bucket(x, bins=bins), torch.full((2,), d * math.log(bins)))


def test_bucket_extremes_land_in_first_and_last_bins():
    x = torch.tensor([[[0.0], [1.0]]])  # the max must be clamped into the last bin, not a bin of its own
    torch.testing.assert_close(bucket(x, bins=4), torch.tensor([math.log(2)]))


def test_bucket_constant_dimension_contributes_zero():
    x = randn(2, 50, 3, seed=3)
    with_constant = torch.cat([x, torch.full((2, 50, 1), 7.0)], dim=2)
    torch.testing.assert_close(bucket(with_constant), bucket(x))
    assert (bucket(torch.full((2, 50, 3), -1.5)) == 0).all()


def test_bucket_invariant_to_per_dimension_affine_maps():
    x = randn(3, 64, 6, seed=4)
    scale = torch.tensor([2.0, 0.5, -1.0, -3.0, 1e3, 0.25])  # negative scales flip the bin order
    shift = torch.tensor([1.0, -4.0, 0.0, 10.0, -1e3, 3.0])
    torch.testing.assert_close(bucket(x * scale + shift, bins=16), bucket(x, bins=16), rtol=0, atol=1e-4)


def test_bucket_matches_numpy_histogram():
    x = randn(3, 150, 7, seed=5)
    bins = 12
    expected = []
    for sample in x.double().numpy():
        total = 0.0
        for column in sample.T:
            p = np.histogram(column, bins=bins)[0] / len(column)
            p = p[p > 0]
            total -= np.sum(p * np.log(p))
        expected.append(total)
    torch.testing.assert_close(bucket(x, bins=bins), torch.tensor(expected, dtype=torch.float32))


# --- Renyi ---------------------------------------------------------------------------------------


def naive_renyi(sample: np.ndarray, alpha: float) -> float:
    n = len(sample)
    z = (sample - sample.mean(0)) / (sample.std(0, ddof=1) + 1e-10)
    dist = np.array([[np.linalg.norm(z[i] - z[j]) for j in range(n)] for i in range(n)])
    sigma = np.sort(dist.ravel())[(n * n - 1) // 2]  # torch.median: the lower of the two middle values
    kernel = np.maximum(np.exp(-(dist**2) / (2 * sigma**2)), 1e-10)
    return math.log(np.mean(kernel ** (alpha - 1))) / (1 - alpha)


@pytest.mark.parametrize("alpha", [4.0, 2.0, 0.5])
def test_renyi_matches_naive_reference(alpha):
    x = randn(3, 40, 6, seed=6) * torch.tensor([1.0, 10.0, 0.1, 3.0, 1.0, 50.0])
    expected = torch.tensor([naive_renyi(s, alpha) for s in x.double().numpy()], dtype=torch.float32)
    torch.testing.assert_close(renyi(x, alpha=alpha), expected, rtol=1e-4, atol=1e-4)


def test_renyi_kernel_floor_matches_reference():
    # a tight cluster and one far outlier: the outlier's kernel values fall below the 1e-10 floor
    x = torch.cat([1e-3 * randn(1, 39, 1, seed=14), torch.ones(1, 1, 1)], dim=1)
    expected = torch.tensor([naive_renyi(x[0].double().numpy(), 0.5)], dtype=torch.float32)
    torch.testing.assert_close(renyi(x, alpha=0.5), expected, rtol=1e-4, atol=1e-4)


def test_renyi_invariant_to_per_dimension_affine_maps():
    x = randn(2, 40, 4, seed=7)
    scale, shift = torch.tensor([3.0, -0.2, 50.0, 1.0]), torch.tensor([1.0, 2.0, -3.0, 100.0])
    torch.testing.assert_close(renyi(x * scale + shift), renyi(x), rtol=1e-4, atol=1e-4)


def test_renyi_rejects_alpha_one():
    with pytest.raises(ValueError):
        renyi(randn(1, 10, 2), alpha=1.0)


# --- Similarity scores ---------------------------------------------------------------------------


def test_similarity_scores_at_extremes():
    x = randn(2, 30, 16, seed=8)
    torch.testing.assert_close(cosine(x, x), torch.zeros(2), atol=1e-6, rtol=0)
    torch.testing.assert_close(cosine(x, -x), torch.full((2,), 2.0))
    torch.testing.assert_close(angular(x, x), torch.zeros(2), atol=2e-3, rtol=0)  # arccos is steep at 1
    torch.testing.assert_close(angular(x, -x), torch.ones(2), atol=2e-3, rtol=0)
    torch.testing.assert_close(angular(x, 2 * x), torch.zeros(2), atol=2e-3, rtol=0)


def test_similarity_scores_match_naive_reference():
    x, y = randn(3, 20, 8, seed=9), randn(3, 20, 8, seed=10)
    cos = np.array(
        [
            [np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b) for a, b in zip(xs, ys)]
            for xs, ys in zip(x.numpy(), y.numpy())
        ]
    )
    torch.testing.assert_close(cosine(x, y), torch.tensor(1 - cos.mean(1), dtype=torch.float32))
    expected_angular = (np.arccos(cos) / np.pi).mean(1)
    torch.testing.assert_close(angular(x, y), torch.tensor(expected_angular, dtype=torch.float32))


def test_similarity_scores_reject_mismatched_shapes():
    with pytest.raises(ValueError):
        cosine(randn(1, 5, 4), randn(1, 6, 4))


# --- Shared contract: batching, dtype, shape -----------------------------------------------------

# similarity scores compare each sample with its own tokens reversed, so a mixed-up sample would show
ENTROPY = {n: criteria.get(n).bind() for n in criteria.names(kind="entropy", needs="hidden")}
ALL = {**ENTROPY, **{n: (lambda x, f=criteria.get(n).bind(): f(x, x.flip(1)))
                     for n in criteria.names(kind="similarity", needs="hidden")}}


@pytest.mark.parametrize("name", sorted(ALL))
def test_batch_equals_samples_alone(name):
    fn = ALL[name]
    x = randn(4, 48, 12, seed=11) * torch.tensor([1.0, 5.0, 0.2, 30.0])[:, None, None]  # unlike samples
    batched = fn(x)
    assert batched.shape == (4,) and batched.dtype == torch.float32
    alone = torch.cat([fn(x[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(batched, alone, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", sorted(ALL))
def test_half_precision_input_close_to_float32(name):
    fn = ALL[name]
    x = randn(3, 64, 16, seed=12)
    reduced = fn(x.to(torch.bfloat16))
    assert reduced.dtype == torch.float32
    # same (bf16-rounded) points in float32: only the internal precision may differ
    torch.testing.assert_close(reduced, fn(x.to(torch.bfloat16).float()))
    torch.testing.assert_close(reduced, fn(x), rtol=0.05, atol=0.05)


@pytest.mark.parametrize("name", sorted(ENTROPY))
def test_entropy_estimators_reject_non_3d_input(name):
    with pytest.raises(ValueError):
        ENTROPY[name](randn(64, 16))


# --- Registry ------------------------------------------------------------------------------------


def test_registry_binds_parameters():
    x = randn(2, 60, 5, seed=13)
    bind = lambda name, **params: criteria.get(name).bind(**params)  # noqa: E731
    torch.testing.assert_close(bind("knn", k=10)(x), knn(x, k=10))
    torch.testing.assert_close(bind("bucket", bins=20)(x), bucket(x, bins=20))
    torch.testing.assert_close(bind("renyi", alpha=2.0)(x), renyi(x, alpha=2.0))
    assert not torch.allclose(bind("knn", k=10)(x), knn(x))


def test_registry_unknown_name_lists_the_registered_ones():
    with pytest.raises(CompanionError) as info:
        criteria.get("entropyy")
    assert set(criteria.names()) <= set(str(info.value).replace(",", " ").split())
    assert "\n" not in str(info.value)


def test_registry_rejects_an_unknown_parameter():
    with pytest.raises(CompanionError, match="bins"):
        criteria.get("knn").bind(bins=20)


# --- Diagnostics: RMS norm, scale-free KNN, Miller–Madow -----------------------------------------


def test_rms_of_constant_and_of_mixed_tokens():
    torch.testing.assert_close(rms(torch.full((2, 7, 5), -3.0)), torch.full((2,), 3.0))
    x = torch.tensor([[[3.0, 4.0], [0.0, 0.0]]])  # token RMS sqrt(12.5) and 0
    torch.testing.assert_close(token_rms(x), torch.tensor([[math.sqrt(12.5), 0.0]]))
    torch.testing.assert_close(rms(x), torch.tensor([math.sqrt(12.5) / 2]))


def test_knn_unit_is_invariant_to_scaling_each_token():
    x = randn(2, 40, 6, seed=21)
    scale = torch.rand(2, 40, 1, generator=torch.Generator().manual_seed(3)) * 100 + 0.01
    torch.testing.assert_close(knn_unit(x * scale, k=5), knn_unit(x, k=5), rtol=1e-4, atol=1e-4)
    unit = x / token_rms(x)[..., None]
    torch.testing.assert_close(knn_unit(x, k=5), knn(unit, k=5))
    assert not torch.allclose(knn(x * scale, k=5), knn(x, k=5))


def test_miller_madow_adds_occupied_bins_minus_one_over_2n():
    # one sample, 2 dimensions, 4 tokens, 4 bins: dimension 0 fills 4 bins, dimension 1 two
    x = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [2.0, 3.0], [3.0, 3.0]]])
    n, occupied = 4, 4 + 2
    torch.testing.assert_close(bucket(x, bins=4), torch.tensor([math.log(4) + math.log(2)]))
    torch.testing.assert_close(bucket_mm(x, bins=4) - bucket(x, bins=4), torch.tensor([(occupied - 2) / (2 * n)]))
    y = randn(3, 50, 7, seed=22)
    assert (bucket_mm(y, bins=10) > bucket(y, bins=10)).all()
