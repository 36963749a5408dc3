"""Batched k-medoids with KKZ initialisation (SPEC §3), exact to the original and O(M·N²) in memory.

The original scores candidate medoids with a masked `[M, K, N, N]` copy of the distances. Here each
token's score is the sum of its distance row over its own cluster, one masked `[M, N, N]` reduction:
the summed values sit in the same positions of a row of length N (members' distances, zeros
elsewhere), so the sums, and with them the chosen medoids, are bitwise the same.
"""
from typing import Optional

import torch

from .distance import (assign_to_medoids, check_distance, exact_fp32, kkz_init,
                       pairwise_distances, shift_distances)


def batch_kmedoids(x: torch.Tensor, k: int, distance: str = 'euclidean', norm_p: float = 2.0,
                   pre_norm: bool = False, threshold: float = 1e-5, iter_limit: int = 100,
                   chunk_size: Optional[int] = None):
    """Cluster the N tokens of each of M samples into k groups.

    x: (M, N, C), any float dtype (computed in fp32, no gradient, autocast off). The whole batch
    is one chunk, or with `chunk_size` each run of that many consecutive samples is, as if it
    were clustered by a call of its own (the distance shift and the stop rule are per chunk).
    Returns (assignment (M, N) int64 in [0, k), medoids (M, k) int64 token indices, ascending);
    assignment[m, b] = j means token b belongs to the cluster of medoids[m, j].
    """
    check_kmedoids_args(x, k, threshold, iter_limit)
    check_distance(distance, norm_p)
    with exact_fp32(x.device.type):
        x = x.float()
        if pre_norm:
            x = x / (x.norm(dim=-1, keepdim=True) + 1e-6)
        dist = shift_distances(pairwise_distances(x, distance, norm_p, chunk_size), chunk_size)
        return kmedoids_on_distances(x, dist, k, threshold, iter_limit, chunk_size)


def check_kmedoids_args(x: torch.Tensor, k: int, threshold: float, iter_limit: int) -> None:
    if x.ndim != 3:
        raise ValueError(f"x must be (M, N, C), got shape {tuple(x.shape)}")
    if not 1 <= k <= x.shape[1]:
        raise ValueError(f"k (--cluster_num_blocks) must be in [1, N={x.shape[1]}], got {k}")
    if iter_limit < 0:
        raise ValueError(f"iter_limit (--cluster_iter_limit) must be >= 0, got {iter_limit}")


def kmedoids_on_distances(x: torch.Tensor, dist: torch.Tensor, k: int, threshold: float,
                          iter_limit: int, chunk_size: Optional[int] = None):
    """The k-medoids iterations on already shifted distances, chunk by chunk of `chunk_size` samples.

    A sample whose medoids did not move is at a fixed point: the next iteration would compute the
    same assignment and the same medoids again, so it leaves the work (its medoids are kept and it
    adds an exact 0 to its chunk's stop criterion). A chunk whose stop rule fired keeps its
    medoids from then on. Neither changes a result. The loop reads one small tensor per iteration
    from the device (the moved medoids per sample); the stop rule itself is applied on the device
    one iteration later, by freezing the chunk's samples, which then stop moving and leave.
    x: (M, N, C) fp32, used for the seeds and the stop rule; dist: (M, N, N) from
    `shift_distances`. Returns (assignment (M, N), medoids (M, k) ascending), int64.
    """
    m = x.shape[0]
    chunk_size = chunk_size or max(m, 1)
    chunk_of = torch.arange(m, device=x.device) // chunk_size  # (M,)
    stopped = torch.zeros(-(-m // chunk_size), dtype=torch.bool, device=x.device)  # per chunk
    medoids = kkz_init(x, dist, k)
    active, active_dist = torch.arange(m, device=x.device), dist  # samples whose medoids may still move
    for _ in range(iter_limit):
        old = medoids.index_select(0, active)  # (A, k)
        new = update_medoids(active_dist, assign_to_medoids(active_dist, old), k)
        frozen = stopped.index_select(0, chunk_of.index_select(0, active)).unsqueeze(1)  # (A, 1)
        new = torch.where(frozen, old, new)
        medoids.index_copy_(0, active, new)
        moved = new != old  # (A, k)
        moved_per_sample = moved.sum(dim=1).tolist()  # the loop's one host synchronisation
        total = sum(moved_per_sample)
        if total == 0:
            break  # every remaining sample is at a fixed point or frozen
        stopped |= chunk_stopped(x, old, new, moved, total, active, chunk_size, threshold)
        remaining = sum(count > 0 for count in moved_per_sample)
        if remaining < len(active):
            kept = torch.nonzero_static(moved.any(dim=1), size=remaining).squeeze(1)  # size known: no sync
            active, active_dist = active.index_select(0, kept), active_dist.index_select(0, kept)
    medoids = medoids.sort(dim=1).values
    return assign_to_medoids(dist, medoids), medoids


def chunk_stopped(x: torch.Tensor, old: torch.Tensor, new: torch.Tensor, moved: torch.Tensor, total: int,
                  active: torch.Tensor, chunk_size: int, threshold: float) -> torch.Tensor:
    """The stop rule of every chunk: the chunk's mean over its samples of sum_k |x[new_k] - x[old_k]|_2
    is below the threshold. x: (M, N, C); old, new, moved: (A, k) for the A `active` samples of
    the M, `total` moved medoids among them.

    Only the moved medoids are gathered; every other term is an exact 0 in its place, so the sums
    and the means are bitwise those of the original's dense computation over each chunk. The
    comparison is made in fp32, as in the original. Returns (chunks,) bool.
    """
    m, n, c = x.shape
    k = old.shape[1]
    where = torch.nonzero_static(moved.view(-1), size=total).squeeze(1)  # (P,) into (A·k)
    rows, slots = where // k, where % k
    base = n * active.index_select(0, rows)  # (P,): row of token 0 of the sample in x viewed (M·N, C)
    flat = x.reshape(-1, c)
    diff = flat.index_select(0, new.view(-1).index_select(0, where) + base)
    diff.sub_(flat.index_select(0, old.view(-1).index_select(0, where) + base))  # (P, C)
    step = x.new_zeros(m * k).index_copy_(0, (base // n) * k + slots, diff.mul_(diff).sum(dim=-1).sqrt_())
    per_sample = step.view(m, k).sum(dim=-1)  # (M,); d * d has the bits of d ** 2
    return torch.stack([chunk.mean() for chunk in per_sample.split(chunk_size)]) < threshold


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
