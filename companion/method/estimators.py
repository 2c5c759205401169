"""Per-sample entropy estimators and similarity scores of hidden states.

Every function takes a (samples, tokens, dim) tensor, treats each sample's tokens as a point cloud of
n = tokens points in d = dim dimensions, and returns one float32 value per sample, shape (samples,), on
the input's device. They are batched, free of host syncs and computed in float32 whatever the input
dtype, so the same code runs on CPU and GPU. Averaging over samples is left to the caller. The
criterion registry (:mod:`companion.method.criteria`) names them, with their parameters' defaults.
"""

import math

import torch
from torch import Tensor

_LOG_EPS = 1e-10  # the released code's guard against log 0 (duplicate tokens) and division by a zero std


def _points(x: Tensor) -> Tensor:
    if x.dim() != 3:
        raise ValueError(f"expected a (samples, tokens, dim) tensor, got shape {tuple(x.shape)}")
    return x.float()


def _squared_distances(x: Tensor, centered: bool = False) -> Tensor:
    """Pairwise squared Euclidean distances within each sample, (samples, n, n), through one matmul.

    Centering first (skipped when ``x`` already is) is exact for distances and keeps the Gram-matrix
    form precise; it is about ten times faster than ``torch.cdist`` on CPU.
    """
    if not centered:
        x = x - x.mean(dim=1, keepdim=True)
    sq_norm = x.square().sum(dim=2)
    gram = torch.baddbmm(sq_norm[:, :, None] + sq_norm[:, None, :], x, x.transpose(1, 2), alpha=-2)
    return gram.clamp_min_(0)


def knn(x: Tensor, k: int = 25) -> Tensor:
    """Kozachenko–Leonenko differential entropy (nats) from each token's k-th nearest other token.

    H = d·mean_i log r_k(i) + (d/2) log π − log Γ(d/2 + 1) + log n − log k. Translation invariant;
    scaling x by a shifts H by exactly d·log a, so values are only comparable between hidden states of
    similar scale.

    The fast Gram-matrix distances only rank the neighbours: their rounding error, about 1e-7 of the
    squared norms, would leave identical tokens (repeated tokens at the embedding boundary) a distance
    far above 0 and thus a log r_k hundreds of nats off. r_k is therefore recomputed from the difference
    to the k-th ranked token, which is exactly 0 for an identical one. (Distinct tokens closer than
    that rounding error may still be ranked in the wrong order among themselves.)
    """
    x = _points(x)
    b, n, d = x.shape
    if not 1 <= k < n:
        raise ValueError(f"knn needs 1 <= k < tokens, got k={k} with {n} tokens")
    sq_dist = _squared_distances(x)
    sq_dist.diagonal(dim1=1, dim2=2).fill_(math.inf)  # a token is never its own neighbour
    kth = sq_dist.topk(k, dim=2, largest=False).indices[..., -1]  # (samples, n)
    rows = (kth + torch.arange(0, b * n, n, device=x.device)[:, None]).flatten()  # in the (b·n, d) flat view
    neighbour = x.reshape(b * n, d).index_select(0, rows).view(b, n, d)  # whole rows: cheaper than a gather
    r_k = torch.linalg.vector_norm(neighbour.sub_(x), dim=2)
    const = (d / 2) * math.log(math.pi) - math.lgamma(d / 2 + 1) + math.log(n) - math.log(k)
    return d * torch.log(r_k + _LOG_EPS).mean(dim=1) + const


def token_rms(x: Tensor) -> Tensor:
    """RMS norm of every token vector, sqrt(mean over features of x²), shape (samples, tokens)."""
    return _points(x).square().mean(dim=2).sqrt()


def rms(x: Tensor) -> Tensor:
    """Mean over tokens of each token's RMS norm: the scale of the hidden states (not an entropy)."""
    return token_rms(x).mean(dim=1)


def knn_unit(x: Tensor, k: int = 25) -> Tensor:
    """:func:`knn` on tokens divided by their RMS norm (:func:`token_rms`): scale-free, ours, not the paper's.

    Invariant to scaling each token by its own positive factor, so a profile of it shows the entropy
    of the hidden states' directions with the growth of their norm over depth taken out.
    """
    x = _points(x)
    return knn(x / token_rms(x).clamp_min(_LOG_EPS)[..., None], k=k)


def _histograms(x: Tensor, bins: int) -> Tensor:
    """Token counts of each dimension's equal-width histogram between its min and max, (samples, dim, bins).

    The max goes into the last bin; a constant dimension puts all tokens in bin 0.
    """
    b, n, d = x.shape
    lo, hi = x.amin(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)
    span = hi - lo
    span = torch.where(span > 0, span, torch.ones_like(span))
    index = ((x - lo) * (bins / span)).int().clamp_(0, bins - 1)
    cell = torch.arange(b * d, device=x.device, dtype=torch.int32).view(b, 1, d) * bins  # a histogram per (sample, dim)
    flat = (cell + index).flatten()  # index_add_ rather than bincount, which syncs with the host on CUDA
    return x.new_zeros(b * d * bins).index_add_(0, flat, x.new_ones(flat.numel())).view(b, d, bins)


def bucket(x: Tensor, bins: int = 80) -> Tensor:
    """Sum over dimensions of the Shannon entropy (nats) of a per-dimension equal-width histogram.

    Each dimension gets `bins` bins between its min and max over the sample's tokens, so the estimate
    is invariant to any per-dimension affine map (including sign flips) and lies in [0, d·log bins];
    a constant dimension contributes 0. Memory is O(samples·tokens·dim + samples·dim·bins).
    This plug-in estimate is biased low by about (m − 1)/(2n) nats per dimension with m occupied bins
    and n tokens (see :func:`bucket_mm`).
    """
    x = _points(x)
    p = _histograms(x, bins) / x.shape[1]
    return -torch.special.xlogy(p, p).sum(dim=(1, 2))


def bucket_mm(x: Tensor, bins: int = 80) -> Tensor:
    """:func:`bucket` with the Miller–Madow correction: + Σ over dimensions of (m − 1)/(2n) nats.

    m is the number of occupied bins of a dimension, n the number of tokens. A diagnostic of the plug-in
    bias, not the paper's estimator.
    """
    x = _points(x)
    b, n, d = x.shape
    counts = _histograms(x, bins)
    p = counts / n
    occupied = (counts > 0).sum(dim=(1, 2)).float()
    return -torch.special.xlogy(p, p).sum(dim=(1, 2)) + (occupied - d) / (2 * n)


def renyi(x: Tensor, alpha: float = 4.0) -> Tensor:
    """Kernel (matrix-free) Rényi entropy of order alpha, as the released code computes it.

    Each dimension is standardised over the sample's tokens, σ is the median of all n² pairwise
    distances (diagonal zeros included), K = exp(−D²/2σ²) clamped to ≥ 1e-10, and
    H = log mean(K^(α−1)) / (1 − α). Invariant to per-dimension affine maps with nonzero scale.
    """
    if alpha == 1:
        raise ValueError("renyi does not support alpha == 1")
    x = _points(x)
    centered = x - x.mean(dim=1, keepdim=True)
    std = (centered.square().sum(dim=1, keepdim=True) / (x.shape[1] - 1)).sqrt()  # = x.std(dim=1), faster
    sq_dist = _squared_distances(centered / (std + _LOG_EPS), centered=True)
    sq_dist.diagonal(dim1=1, dim2=2).zero_()
    # the median of D is the square root of the median of D² (same element: the map is monotone)
    sq_sigma = sq_dist.flatten(1).median(dim=1).values[:, None, None]
    kernel = torch.exp(-sq_dist / (2 * sq_sigma)).clamp_min(1e-10)
    return torch.log(kernel.pow(alpha - 1).mean(dim=(1, 2))) / (1 - alpha)


def _token_cosine(x: Tensor, y: Tensor) -> Tensor:
    if x.shape != y.shape:
        raise ValueError(f"block input and output shapes differ: {tuple(x.shape)} vs {tuple(y.shape)}")
    x, y = _points(x), _points(y)
    norms = (x.square().sum(dim=-1) * y.square().sum(dim=-1)).sqrt().clamp_min(1e-8)
    return (x * y).sum(dim=-1) / norms


def cosine(x: Tensor, y: Tensor) -> Tensor:
    """1 − mean over tokens of cos(x_t, y_t): LLM-Drop's / ShortGPT's block importance, in [0, 2]."""
    return 1 - _token_cosine(x, y).mean(dim=1)


def angular(x: Tensor, y: Tensor) -> Tensor:
    """Mean over tokens of arccos(cos(x_t, y_t)) / π: Gromov et al.'s angular distance, in [0, 1]."""
    return (torch.arccos(_token_cosine(x, y).clamp(-1, 1)) / math.pi).mean(dim=1)
