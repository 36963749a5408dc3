"""The clustering schedule: which blocks of the image tower get a token-clustering module, and with what.

`build_cluster_specs` turns the schedule flags (SPEC §3) into one `ClusterSpec` or None per block;
the model builds a `TokenCluster` from each spec. Nothing here reads the argparse namespace.
"""
from dataclasses import dataclass
from typing import List, Optional, Sequence

import torch

from .distance import DISTANCES
from .spectral import GRAPHS

CLUSTERING = ('kmediods++', 'spectral')  # the CLI spelling of k-medoids is the original's
SHIFTS = ('temporal_shift', 'token_shift')
ALGORITHMS = CLUSTERING + ('pooling', 'sparse_sampling') + SHIFTS


@dataclass(frozen=True)
class ClusterSpec:
    """Everything one block's TokenCluster needs. Frames and tokens are the listed schedule values
    except `tokens_per_frame`, the number of non-[CLS] tokens per frame that actually enters."""
    algorithm: str
    block: int  # 0-based index of the block in the image tower
    frames_in: int  # f_{i-1}; shifts always use max_frames
    frames_out: int  # f_i
    tokens_in: int  # listed k_{i-1} (k_0 = k_1)
    tokens_out: int  # k_i, the K of the clustering
    tokens_per_frame: int
    width: int
    chunk_size: int  # segments per clustering chunk, as the original splits them
    distance: str = 'euclidean'
    norm_p: float = 2.0
    pre_norm: bool = False
    threshold: float = 1e-5
    iter_limit: int = 100
    aggregation: Optional[str] = None  # None: medoid tokens; 'mean': cluster means
    spectral_graph: str = 'HeatKernel'
    spectral_sigma: float = 2.0
    spectral_knn_k: int = 10  # already resolved from the automatic rule
    spectral_spg: bool = False
    svd_correct_sign: bool = True
    cluster_embedding: bool = False
    embed_from_clip: bool = True
    cluster_frame_embedding: bool = False

    @property
    def segment_frames(self) -> int:
        """d, the number of consecutive frames pooled into one segment."""
        return self.frames_in // self.frames_out


def chunk_size_for(patch_size: int) -> int:
    """Segments per clustering chunk. The original uses 4 for ViT-B/16 and 16 otherwise (it only
    runs ViT-B/32 and ViT-B/16); we assume 16 for patch 32 and 4 for any smaller patch."""
    return 16 if patch_size >= 32 else 4


def build_cluster_specs(cluster_num_blocks: Sequence[int], target_frames_blocks: Sequence[int],
                        max_frames: int, cluster_inter: bool, algorithm: str, width: int,
                        num_patches: int, chunk_size: int, *, distance: str = 'euclidean',
                        norm_p: float = 2.0, pre_norm: bool = False, threshold: float = 1e-5,
                        iter_limit: int = 100, aggregation: Optional[str] = None,
                        spectral_graph: str = 'HeatKernel', spectral_sigma: float = 2.0,
                        spectral_knn_k: int = 1, spectral_spg: bool = False,
                        svd_correct_sign: bool = True, cluster_embedding: bool = False,
                        embed_from_clip: bool = True,
                        cluster_frame_embedding: bool = False) -> List[Optional[ClusterSpec]]:
    """One ClusterSpec (or None) per block, by SPEC §3's rule: block i (1-based) gets a module iff
    cluster_inter and k_i > 1 and (f_{i-1} > f_i or k_{i-1} > k_i), with k_0 = k_1, f_0 = max_frames.

    Raises ValueError naming the flag when the schedule cannot run (lengths differ, frames that do
    not divide, frames that change in a block without a module, K above the tokens available).
    """
    ks, fs = list(cluster_num_blocks), list(target_frames_blocks)
    _check_options(ks, fs, algorithm, distance, aggregation, spectral_graph)
    if not cluster_inter:
        return [None] * len(ks)
    common = dict(algorithm=algorithm, width=width, chunk_size=chunk_size, distance=distance,
                  norm_p=norm_p, pre_norm=bool(pre_norm), threshold=threshold, iter_limit=iter_limit,
                  aggregation=None if aggregation in (None, 'None') else aggregation,
                  spectral_graph=spectral_graph, spectral_sigma=spectral_sigma,
                  spectral_spg=bool(spectral_spg) and algorithm == 'spectral',
                  svd_correct_sign=bool(svd_correct_sign),
                  cluster_embedding=bool(cluster_embedding) and algorithm in CLUSTERING,
                  embed_from_clip=bool(embed_from_clip),
                  cluster_frame_embedding=bool(cluster_frame_embedding) and algorithm in CLUSTERING)
    specs: List[Optional[ClusterSpec]] = []
    tokens = num_patches  # non-[CLS] tokens per frame that actually enter the next block
    for i, (k, f) in enumerate(zip(ks, fs)):
        k_prev, f_prev = ks[max(i - 1, 0)], (fs[i - 1] if i else max_frames)
        if not (k > 1 and (f_prev > f or k_prev > k)):
            if f != f_prev and algorithm not in SHIFTS:
                source = "--max_frames" if i == 0 else "--target_frames_blocks"
                raise ValueError(f"--target_frames_blocks changes the frames from {f_prev} ({source}) to {f} "
                                 f"at block {i + 1}, but no clustering module runs there (--cluster_num_blocks "
                                 f"gives {k}); frames can only change where tokens are clustered")
            specs.append(None)
        elif algorithm in SHIFTS:  # shifts always see all max_frames frames and keep the tokens
            specs.append(ClusterSpec(block=i, frames_in=max_frames, frames_out=max_frames, tokens_in=k_prev,
                                     tokens_out=k, tokens_per_frame=tokens, spectral_knn_k=spectral_knn_k,
                                     **common))
        else:
            specs.append(_reducing_spec(i, k_prev, k, f_prev, f, tokens, spectral_knn_k, common))
            tokens = tokens if algorithm == 'pooling' else k
    return specs


def _reducing_spec(i: int, k_prev: int, k: int, f_prev: int, f: int, tokens: int, spectral_knn_k: int,
                   common: dict) -> ClusterSpec:
    """The spec of block i for an algorithm that merges frames into segments (not the shifts)."""
    if f < 1 or f_prev % f != 0:
        raise ValueError(f"--target_frames_blocks: block {i + 1} goes from {f_prev} to {f} frames; "
                         f"the frames entering a clustering block must be a multiple of those leaving it")
    d = f_prev // f
    if common['algorithm'] != 'pooling' and k > d * tokens:
        raise ValueError(f"--cluster_num_blocks: block {i + 1} asks for {k} tokens per segment but a "
                         f"segment has only {d} x {tokens} = {d * tokens} tokens")
    knn_k = spectral_knn_k if spectral_knn_k >= 5 else 5 * d + (0 if k_prev < 100 else 5)  # automatic below 5
    spec = ClusterSpec(block=i, frames_in=f_prev, frames_out=f, tokens_in=k_prev, tokens_out=k,
                       tokens_per_frame=tokens, spectral_knn_k=knn_k, **common)
    _check_spectral(spec)
    return spec


def _check_options(ks: List[int], fs: List[int], algorithm: str, distance: str,
                   aggregation: Optional[str], spectral_graph: str) -> None:
    if len(ks) != len(fs):
        raise ValueError(f"--cluster_num_blocks has {len(ks)} values and --target_frames_blocks has "
                         f"{len(fs)}; both need one value per transformer block")
    if algorithm not in ALGORITHMS:
        raise ValueError(f"--cluster_algo must be one of {ALGORITHMS}, got {algorithm!r}")
    if distance not in DISTANCES:
        raise ValueError(f"--cluster_distance must be one of {DISTANCES}, got {distance!r}")
    if aggregation not in (None, 'None', 'mean'):
        raise ValueError(f"--aggregation must be 'mean' or 'None', got {aggregation!r}")
    if spectral_graph not in GRAPHS:
        raise ValueError(f"--spectral_graph must be one of {GRAPHS}, got {spectral_graph!r}")


def _check_spectral(spec: ClusterSpec) -> None:
    if spec.algorithm != 'spectral':
        return
    n = spec.segment_frames * spec.tokens_per_frame
    if spec.spectral_graph == 'KNN' and spec.spectral_knn_k > n:
        raise ValueError(f"--spectral_knn_k: block {spec.block + 1} needs {spec.spectral_knn_k} neighbours "
                         f"but a segment has only {n} tokens")
    if spec.spectral_spg and spec.tokens_in != spec.tokens_per_frame:
        raise ValueError(f"--spectral_spg: the spatio-temporal graph of block {spec.block + 1} is built for the "
                         f"listed {spec.tokens_in} tokens per frame (--cluster_num_blocks), but "
                         f"{spec.tokens_per_frame} enter the block")


def final_frames(specs: Sequence[Optional[ClusterSpec]], max_frames: int) -> int:
    """Features per video that leave the image tower (f_L when clustering reduced the frames)."""
    frames = max_frames
    for spec in specs:
        if spec is not None and spec.algorithm not in SHIFTS:
            frames = spec.frames_out
    return frames


def video_mask_after_clustering(video_mask: torch.Tensor, frames_out: int) -> torch.Tensor:
    """Mask of the final segments: a segment is valid when any of its frames is.

    FIX: the original keeps the mask of each segment's last frame, so a clip with fewer valid frames
    than the segment length gets an all-zero mask and a zero embedding; the segment's tokens come
    from its valid frames (short clips repeat their last frame), so it is kept here.

    video_mask: (B, T). frames_out: `final_frames(...)`. Returns (B, frames_out); unchanged when
    the frames were not reduced.
    """
    total = video_mask.shape[-1]
    if frames_out == total:
        return video_mask
    if total % frames_out:
        raise ValueError(f"video mask has {total} frames, not a multiple of the {frames_out} final segments")
    segments = video_mask.reshape(*video_mask.shape[:-1], frames_out, total // frames_out)  # (B, f, d)
    return segments.amax(dim=-1)
