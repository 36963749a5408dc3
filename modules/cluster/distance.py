"""Distances, KKZ initialisation and medoid assignment shared by k-medoids and spectral clustering.

Conventions (SPEC §3): `dist[m, a, b]` is read with `a` the medoid or candidate (row) and `b` the
other token; neither distance is exactly symmetric, so the orientation is part of the algorithm.
All functions expect fp32 tensors and are called under `exact_fp32`.
"""
from contextlib import contextmanager
from typing import Optional

import torch

DISTANCES = ('euclidean', 'cosine')


@contextmanager
def exact_fp32(device_type: str):
    """No gradient and no autocast: clustering decisions are made in fp32 on every device."""
    with torch.no_grad(), torch.autocast(device_type=device_type, enabled=False):
        yield


def check_distance(distance: str, norm_p: float) -> None:
    if distance not in DISTANCES:
        raise ValueError(f"distance (--cluster_distance) must be one of {DISTANCES}, got {distance!r}")
    if not norm_p > 0:
        raise ValueError(f"norm_p (--minkowski_norm_p) must be positive, got {norm_p}")


def pairwise_distances(x: torch.Tensor, distance: str = 'euclidean', norm_p: float = 2.0,
                       chunk_size: Optional[int] = None) -> torch.Tensor:
    """Raw distances of the tokens of every sample, as the original computes them chunk by chunk.

    x: (M, N, C) fp32. Returns (M, N, N): `cdist(x, x, p)` or `1 - cos` with x / (|x| + 1e-6).
    A contiguous x is computed in one batched call, whose rows are those of per-chunk calls;
    torch.cdist of a strided x rounds the norms in x's memory order for a single sample and in
    contiguous order otherwise, so a strided x (the spectral embedding) is computed per chunk.
    """
    if distance == 'cosine':
        x_hat = x / (x.norm(dim=-1, keepdim=True) + 1e-6)
        return 1.0 - torch.bmm(x_hat, x_hat.transpose(1, 2))
    if not x.is_contiguous():
        return torch.cat([torch.cdist(chunk, chunk, p=norm_p) for chunk in x.split(chunk_size or len(x))])
    if norm_p == 2.0 and x.shape[1] > CDIST_MM_MIN_ROWS and x.numel():
        return euclidean_distances(x)
    return torch.cdist(x, x, p=norm_p)


# torch.cdist computes p = 2 with a matrix product when either side has more rows than this
# (its default compute_mode), and directly otherwise.
CDIST_MM_MIN_ROWS = 25


def euclidean_distances(x: torch.Tensor) -> torch.Tensor:
    """`torch.cdist(x, x)` for more than 25 tokens, bit for bit, with fewer passes over x.

    cdist forms |a|² + |b|² - 2 a·b as one batched product of the padded operands
    [-2x, |x|², 1] and [x, 1, |x|²] (C + 2 columns), then clamps at 0 and takes the root. The same
    product runs here on the same operands, so every distance has the same bits; the squared
    norms are computed once instead of once per side and the operands are written in place
    instead of concatenated from temporaries. x: (M, N, C) fp32, contiguous. Returns (M, N, N).
    """
    m, n, c = x.shape
    left, right = x.new_empty(m, n, c + 2), x.new_empty(m, n, c + 2)
    torch.mul(x, x, out=left[..., :c])  # x², the bits of x.pow(2), in left's space instead of a temporary
    sq_norm = left[..., :c].sum(dim=-1, keepdim=True)  # (M, N, 1), as cdist rounds it
    torch.mul(x, -2, out=left[..., :c])
    left[..., c:c + 1] = sq_norm
    left[..., c + 1] = 1.0
    right[..., :c] = x
    right[..., c] = 1.0
    right[..., c + 1:] = sq_norm
    return torch.bmm(left, right.transpose(1, 2)).clamp_min_(0.0).sqrt_()  # (M, N, N)


def shift_distances(dist: torch.Tensor, chunk_size: Optional[int] = None) -> torch.Tensor:
    """Make every distance <= -1 with one constant per chunk, then 1 less on the diagonal.

    The shift makes a non-member's score of 0 the worst in the medoid update, and the diagonal
    offset makes each token its own nearest point. dist: (M, N, N), shifted in place (the same
    roundings as `dist - dist.max() - 1.0` on each chunk of `chunk_size` consecutive samples;
    None: the whole batch is one chunk) and returned.
    """
    for chunk in dist.split(chunk_size or max(len(dist), 1)):
        chunk.sub_(chunk.max())
    dist.sub_(1.0)
    dist.diagonal(dim1=1, dim2=2).sub_(1.0)
    return dist


def kkz_init(x: torch.Tensor, dist: torch.Tensor, k: int) -> torch.Tensor:
    """KKZ seeds: the largest-norm token, then repeatedly the token farthest from its nearest seed.

    Keeps a running minimum over the chosen seeds (one row of `dist` per step) instead of
    re-reducing over all chosen seeds; the minimum is exact, so the seeds are the same.
    x: (M, N, C), dist: (M, N, N) shifted. Returns (M, k) int64; ties go to the first index.
    """
    m, n = dist.shape[:2]
    flat = dist.reshape(m * n, n)
    offset = n * torch.arange(m, device=x.device)  # (M,): row of token 0 of each sample in `flat`
    seeds = [x.norm(dim=-1).argmax(dim=1)]
    nearest = flat.index_select(0, seeds[0] + offset)  # (M, N): min over chosen seeds a of dist[a, b]
    for _ in range(1, k):
        seeds.append(nearest.argmax(dim=1))
        torch.minimum(nearest, flat.index_select(0, seeds[-1] + offset), out=nearest)
    return torch.stack(seeds, dim=1)


def medoid_rows(dist: torch.Tensor, medoids: torch.Tensor) -> torch.Tensor:
    """dist[m, medoids[m, j], :] for every sample and medoid. dist: (M, N, N), medoids: (M, K).

    Returns (M, K, N). Row selection on the flattened (M·N, N) matrix, cheaper than a gather.
    """
    m, n = dist.shape[0], dist.shape[-1]
    flat_index = (medoids + n * torch.arange(m, device=dist.device).unsqueeze(1)).reshape(-1)
    return dist.reshape(m * n, n).index_select(0, flat_index).view(m, -1, n)


def assign_to_medoids(dist: torch.Tensor, medoids: torch.Tensor) -> torch.Tensor:
    """Cluster of every token: the medoid a with the smallest dist[a, b], first on ties.

    dist: (M, N, N), medoids: (M, K). Returns (M, N) int64 indices into the medoid list. Uses
    `min(dim).indices`, as the original does (documented first index on ties, faster than argmin
    over a strided dimension).
    """
    return medoid_rows(dist, medoids).min(dim=1).indices
