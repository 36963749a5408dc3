"""Batched normalised spectral clustering (SPEC §3): heat-kernel or KNN graph, symmetric Laplacian,
SVD, k-medoids on the row-normalised spectral embedding.

Spectral results are sensitive to rounding, so the affinity is formed in the original's operation
order (baddbmm, then + |x|², exp(-1.0 * d² / (2σ²))).
"""
from typing import Optional

import torch

from .distance import check_distance, exact_fp32
from .kmedoids import batch_kmedoids, check_kmedoids_args

GRAPHS = ('HeatKernel', 'KNN')


def batch_spectral(x: torch.Tensor, k: int, graph: str = 'HeatKernel', knn_k: int = 10, sigma: float = 2.0,
                   distance: str = 'euclidean', norm_p: float = 2.0, threshold: float = 1e-5,
                   iter_limit: int = 100, correct_sign: bool = True,
                   spatial_temporal_graph: Optional[torch.Tensor] = None, chunk_size: Optional[int] = None):
    """Spectral clustering of the N tokens of each of M samples into k groups (one chunk, or
    chunks of `chunk_size` consecutive samples for the k-medoids step, as `batch_kmedoids`).

    x: (M, N, C), any float dtype (fp32 inside, no gradient). spatial_temporal_graph: optional
    (1, N, N) or (M, N, N) 0/1 mask multiplied into the affinity after the KNN step.
    Returns (assignment (M, N), medoids (M, k) ascending), int64; medoids index the tokens of x.
    """
    check_kmedoids_args(x, k, threshold, iter_limit)
    check_distance(distance, norm_p)
    if graph not in GRAPHS:
        raise ValueError(f"graph (--spectral_graph) must be one of {GRAPHS}, got {graph!r}")
    if graph == 'KNN' and not 1 <= knn_k <= x.shape[1]:
        raise ValueError(f"knn_k (--spectral_knn_k) must be in [1, N={x.shape[1]}], got {knn_k}")
    if spatial_temporal_graph is not None and spatial_temporal_graph.shape[-2:] != (x.shape[1],) * 2:
        raise ValueError(f"spatial_temporal_graph must be (1, N, N) with N={x.shape[1]}, "
                         f"got {tuple(spatial_temporal_graph.shape)}")
    with exact_fp32(x.device.type):
        affinity = graph_affinity(x.float(), graph, knn_k, sigma, spatial_temporal_graph)
        embedding = spectral_embedding(affinity, k, correct_sign)
        return batch_kmedoids(embedding, k, distance=distance, norm_p=norm_p, pre_norm=False,
                              threshold=threshold, iter_limit=iter_limit, chunk_size=chunk_size)


def squared_distances(x: torch.Tensor) -> torch.Tensor:
    """|x_i|² + |x_j|² - 2 x_i·x_j in the original's order; not clamped, so it can be slightly negative.

    x: (M, N, C). Returns (M, N, N).
    """
    sq_norm = x.pow(2).sum(dim=-1, keepdim=True)  # (M, N, 1)
    return torch.baddbmm(sq_norm.transpose(1, 2), x, x.transpose(1, 2), alpha=-2).add(sq_norm)


def graph_affinity(x: torch.Tensor, graph: str, knn_k: int, sigma: float,
                   spatial_temporal_graph: Optional[torch.Tensor]) -> torch.Tensor:
    """Heat-kernel affinity exp(-d² / 2σ²), optionally sparsified to a symmetric KNN graph.

    KNN keeps a_ij when it is at least the knn_k-th largest value of row i (the point itself
    counts) or a_ji is at least that of row j. x: (M, N, C). Returns (M, N, N).
    """
    affinity = torch.exp(-1.0 * squared_distances(x) / (2 * sigma ** 2))
    if graph == 'KNN':
        kth_largest = affinity.topk(knn_k, dim=-1).values[:, :, -1:]  # (M, N, 1)
        keep = affinity >= kth_largest
        affinity = affinity * (keep | keep.transpose(1, 2))
    if spatial_temporal_graph is not None:
        affinity = affinity * spatial_temporal_graph
    return affinity


def normalized_laplacian(affinity: torch.Tensor) -> torch.Tensor:
    """D^-1/2 (D - A) D^-1/2 with D = diag(A.sum(-1)). affinity: (M, N, N), returns (M, N, N).

    The original multiplies by the diagonal matrices with two bmm's; every entry of those products
    has a single non-zero term, so scaling rows then columns gives the same bits without O(N³) work.
    """
    degree = affinity.sum(dim=-1)  # (M, N)
    inv_sqrt = degree.pow(-0.5)
    laplacian = torch.diag_embed(degree) - affinity
    return inv_sqrt.unsqueeze(2) * laplacian * inv_sqrt.unsqueeze(1)


def spectral_embedding(affinity: torch.Tensor, k: int, correct_sign: bool) -> torch.Tensor:
    """Rows of the k last left singular vectors of the normalised Laplacian (the k smallest
    singular values), normalised to unit length. affinity: (M, N, N). Returns (M, N, k).
    """
    u, s, vh = torch.linalg.svd(normalized_laplacian(affinity), full_matrices=False)
    if correct_sign:
        u = sign_corrected(u, s, vh)
    q = u[:, :, -k:]
    return q / (q.norm(p=2, dim=-1, keepdim=True) + 1e-6)


def sign_corrected(u: torch.Tensor, s: torch.Tensor, vh: torch.Tensor) -> torch.Tensor:
    """Bro's sign correction: flip column j of U by sign(sum_c sign(y_jc) y_jc²), y = diag(S) Vh.

    A zero sum zeroes the column, as torch.sign gives 0. u: (M, N, N), s: (M, N), vh: (M, N, N).
    """
    y = s.unsqueeze(-1) * vh
    direction = torch.sum(torch.sign(y) * torch.square(y), dim=2)  # (M, N), one per column of U
    return torch.sign(direction).unsqueeze(1) * u


def spatial_temporal_graph(tokens_per_frame: int, frames: int, wide: bool) -> torch.Tensor:
    """0/1 mask linking tokens within ±3 frames and ±4 (±9 if wide) grid rows and columns.

    Token i has frame i // n, row (i % n) // g, column (i % n) % g, n = tokens_per_frame,
    g = int(sqrt(n)). As in the original, only targets inside the g x g grid are linked, which
    matters when n is not a square. Returns (1, N, N) float, N = frames * n.
    """
    n = tokens_per_frame
    g = int(n ** 0.5)
    reach = 9 if wide else 4
    index = torch.arange(frames * n)
    frame, row, col = index // n, (index % n) // g, (index % n) % g

    def near(a: torch.Tensor, limit: int) -> torch.Tensor:
        return (a.unsqueeze(1) - a.unsqueeze(0)).abs() <= limit  # (N, N)

    in_grid = (row < g).unsqueeze(0)  # (1, N): target j must be inside the grid
    graph = near(frame, 3) & near(row, reach) & near(col, reach) & in_grid
    return graph.float().unsqueeze(0)
