"""Batched k-medoids with KKZ initialisation (SPEC §3), exact to the original and O(M·N²) in memory.

The original scores candidate medoids with a masked `[M, K, N, N]` copy of the distances. Here each
token's score is the sum of its distance row over its own cluster, one masked `[M, N, N]` reduction:
the summed values sit in the same positions of a row of length N (members' distances, zeros
elsewhere), so the sums, and with them the chosen medoids, are bitwise the same.
"""
import torch

from .distance import (assign_to_medoids, check_distance, exact_fp32, kkz_init,
                       pairwise_distances, shift_distances)


def batch_kmedoids(x: torch.Tensor, k: int, distance: str = 'euclidean', norm_p: float = 2.0,
                   pre_norm: bool = False, threshold: float = 1e-5, iter_limit: int = 100):
    """Cluster the N tokens of each of M samples into k groups; the whole batch is one chunk.

    x: (M, N, C), any float dtype (computed in fp32, no gradient, autocast off).
    Returns (assignment (M, N) int64 in [0, k), medoids (M, k) int64 token indices, ascending);
    assignment[m, b] = j means token b belongs to the cluster of medoids[m, j].
    """
    check_kmedoids_args(x, k, threshold, iter_limit)
    check_distance(distance, norm_p)
    with exact_fp32(x.device.type):
        x = x.float()
        if pre_norm:
            x = x / (x.norm(dim=-1, keepdim=True) + 1e-6)
        dist = shift_distances(pairwise_distances(x, distance, norm_p))
        return kmedoids_on_distances(x, dist, k, threshold, iter_limit)


def check_kmedoids_args(x: torch.Tensor, k: int, threshold: float, iter_limit: int) -> None:
    if x.ndim != 3:
        raise ValueError(f"x must be (M, N, C), got shape {tuple(x.shape)}")
    if not 1 <= k <= x.shape[1]:
        raise ValueError(f"k (--cluster_num_blocks) must be in [1, N={x.shape[1]}], got {k}")
    if iter_limit < 0:
        raise ValueError(f"iter_limit (--cluster_iter_limit) must be >= 0, got {iter_limit}")


def kmedoids_on_distances(x: torch.Tensor, dist: torch.Tensor, k: int, threshold: float,
                          iter_limit: int):
    """The k-medoids iterations on already shifted distances.

    A sample whose medoids did not move is at a fixed point: the next iteration would compute the
    same assignment and the same medoids again. Such samples are dropped from the work (their
    medoids are kept and they add an exact 0 to the stop criterion), which changes no result.
    x: (M, N, C) fp32, used for the seeds and the stop rule; dist: (M, N, N) from
    `shift_distances`. Returns (assignment (M, N), medoids (M, k) ascending), int64.
    """
    medoids = kkz_init(x, dist, k)
    active = torch.arange(x.shape[0], device=x.device)  # samples whose medoids may still move
    active_x, active_dist = x, dist
    for _ in range(iter_limit):
        old = medoids[active]  # (A, k)
        new = update_medoids(active_dist, assign_to_medoids(active_dist, old), k)
        moved = old != new  # (A, k)
        medoids[active] = new
        if medoid_shift(active_x, old, new, moved, active, medoids.shape) < threshold:
            break
        still = moved.any(dim=1)
        if not still.any():
            break  # every sample is at a fixed point: further iterations change nothing
        if not still.all():
            active, active_x, active_dist = active[still], active_x[still], active_dist[still]
    medoids = medoids.sort(dim=1).values
    return assign_to_medoids(dist, medoids), medoids


def update_medoids(dist: torch.Tensor, assignment: torch.Tensor, k: int) -> torch.Tensor:
    """New medoid of each cluster: the member a with the smallest sum of dist[a, b] over members b.

    The original takes an argmin over all N tokens where non-members score 0; distances are
    shifted below 0, so that is the first member with the smallest sum, or token 0 for an empty
    cluster, which is what is computed here without a (M, k, N) score tensor.
    dist: (M, N, N) shifted, assignment: (M, N). Returns (M, k) int64.
    """
    m, n = assignment.shape
    same_cluster = assignment.unsqueeze(2) == assignment.unsqueeze(1)  # (M, N, N)
    row_cost = torch.where(same_cluster, dist, 0.0).sum(dim=-1)  # (M, N)
    best = row_cost.new_zeros(m, k).scatter_reduce(1, assignment, row_cost, 'amin', include_self=False)
    is_best = row_cost == best.gather(1, assignment)  # (M, N)
    token = torch.arange(n, device=dist.device).expand(m, n)
    first = token.new_full((m, k), n).scatter_reduce(1, assignment, torch.where(is_best, token, n), 'amin')
    return torch.where(first == n, 0, first)  # an empty cluster: token 0, as the original's argmin


def medoid_shift(x: torch.Tensor, old: torch.Tensor, new: torch.Tensor, moved: torch.Tensor,
                 samples: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Batch mean of sum_k |x[new_k] - x[old_k]|_2 over all M samples, the stop criterion.

    x: (A, N, C), old, new, moved: (A, k) for the A active `samples` of the M in `shape` (M, k).
    Only moved medoids are gathered; every other entry is an exact 0 in its place, so the sums
    and the mean are bitwise those of the original's dense computation. The result stays an fp32
    tensor so that the comparison with the threshold is made in fp32, as in the original.
    """
    rows, slots = moved.nonzero(as_tuple=True)
    step = x.new_zeros(shape)  # (M, k)
    if rows.numel():
        diff = x[rows, new[rows, slots]] - x[rows, old[rows, slots]]  # (P, C)
        step[samples[rows], slots] = diff.pow(2).sum(dim=-1).sqrt()
    return step.sum(dim=-1).mean()
