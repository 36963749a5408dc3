"""Retrieval metrics of CLIP4Clip/CenterCLIP: R@1/5/10, median and mean rank (SPEC §6)."""
import numpy as np
import torch

TOP_K = (1, 5, 10)


def metrics_from_ranks(ranks, median):
    """ranks: 0-based ranks of the ground truth; `median` is the median function to apply."""
    ranks = np.asarray(ranks)
    metrics = {f"R{k}": float(np.sum(ranks < k)) * 100 / len(ranks) for k in TOP_K}
    metrics["MR"] = float(median(ranks)) + 1
    metrics["MeanR"] = float(np.mean(ranks)) + 1
    return metrics


def ground_truth_ranks(sim):
    """sim [n, m] with the ground truth of row i at column i -> the ranks the original emits: for
    each row, one rank per entry equal to the diagonal one, r, r+1, ..., r+t-1, where r counts the
    entries strictly greater and t the equal ones (the diagonal included). Ties therefore add ranks
    (an all-equal n x n matrix gives 0 .. n-1 in every row, R@1 = 100/n); a non-finite diagonal
    entry emits none, as inf - inf and NaN never compare equal in the original's subtraction."""
    diagonal = np.diag(sim)[:, None]
    greater = (sim > diagonal).sum(axis=1)
    ties = np.where(np.isfinite(diagonal[:, 0]), (sim == diagonal).sum(axis=1), 0)
    return np.concatenate([np.arange(r, r + t) for r, t in zip(greater, ties)])


def compute_metrics(sim):
    """Single caption per video: metrics of the rows of `sim` [n, n] (text->video for `sim`,
    video->text for `sim.T`), over the ranks of `ground_truth_ranks`; MR is numpy's median plus one."""
    return metrics_from_ranks(ground_truth_ranks(sim), np.median)


def stack_by_video(sim, cut_off_points):
    """Flat [n_text, n_video] -> [n_video, max_captions, n_video], padding rows with -inf.

    cut_off_points[i] is the index of video i's last caption in the flat caption list.
    """
    ends = [c + 1 for c in cut_off_points]
    starts = [0] + ends[:-1]
    max_captions = max(e - s for s, e in zip(starts, ends))
    blocks = []
    for s, e in zip(starts, ends):
        padding = np.full((max_captions - (e - s), sim.shape[1]), -np.inf, dtype=sim.dtype)
        blocks.append(np.concatenate([sim[s:e], padding], axis=0))
    return np.stack(blocks, axis=0)


def multi_sentence_t2v_metrics(stacked):
    """stacked [n_video, max_captions, n_video]: every caption ranks its own video among all videos
    (double argsort, descending); padding rows are ignored; MR uses torch.median (lower middle)."""
    sims = torch.from_numpy(stacked).permute(1, 0, 2)  # (captions, video, video')
    order = torch.argsort(sims, dim=-1, descending=True)
    positions = torch.argsort(order, dim=-1)
    ranks = torch.diagonal(positions, dim1=1, dim2=2).flatten()  # caption-major
    own = torch.diagonal(torch.from_numpy(stacked), dim1=0, dim2=2).flatten()  # same order as ranks
    valid = ranks[torch.isfinite(own)].numpy()
    return metrics_from_ranks(valid, lambda r: torch.median(torch.from_numpy(r)).item())


def multi_sentence_v2t_sim(stacked):
    """For every (video, video') the best similarity among video's captions: [n_video', n_video]
    transposed as the original, i.e. rows are videos asking for texts."""
    sims = np.where(np.isnan(stacked), -np.inf, stacked)
    return sims.max(axis=1).T


def dual_softmax(sim):
    """CAMoE's DSL re-normalisation at inference: sim * softmax(sim, dim=0) * n_rows."""
    prior = torch.softmax(torch.from_numpy(sim), dim=0).numpy()
    return sim * prior * sim.shape[0]


def retrieval_metrics(sim, cut_off_points=None):
    """Both directions from the flat similarity matrix [n_text, n_video]. With `cut_off_points`
    (multi-sentence), texts are grouped by video as SPEC §6 describes."""
    if cut_off_points is None:
        return {"t2v": compute_metrics(sim), "v2t": compute_metrics(sim.T)}
    stacked = stack_by_video(sim, cut_off_points)
    return {"t2v": multi_sentence_t2v_metrics(stacked), "v2t": compute_metrics(multi_sentence_v2t_sim(stacked))}
