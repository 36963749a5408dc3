"""The per-block token-clustering module that the image tower calls before attention (SPEC §3).

Hook contract with `modules/clip.py`: a block with a module runs
    x = module(x); x = x + attn(ln_1(x)); x = module.post_attention(x); x = x + mlp(ln_2(x))
on the batch-first residual stream x (B·f, 1 + n, W), row b·f + t, token 0 = [CLS].
"""
from typing import List, Optional, Sequence

import torch
from torch import nn

from .baselines import segment_mean, sparse_sample, temporal_shift, token_shift
from .kmedoids import batch_kmedoids
from .schedule import CLUSTERING, ClusterSpec
from .spectral import batch_spectral, spatial_temporal_graph


class TokenCluster(nn.Module):
    """Multi-segment token clustering (k-medoids or spectral) or one of the baselines, for one block.

    State-dict entries, as in the original's checkpoints: `cluster_embed` (K, W) with
    spec.cluster_embedding, `cluster_frame_embed` (d, 1, W) with spec.cluster_frame_embedding
    (never used in the forward pass), buffer `spg` (1, N, N) with spec.spectral_spg.
    """

    def __init__(self, spec: ClusterSpec, positional_embedding: Optional[torch.Tensor] = None):
        super().__init__()
        self.spec = spec
        width, d = spec.width, spec.segment_frames
        if spec.cluster_embedding:
            # FIX: the original sizes this table 768 wide whatever the model; it is W wide here.
            self.cluster_embed = nn.Parameter(self._initial_cluster_embed(positional_embedding))
        if spec.cluster_frame_embedding:
            self.cluster_frame_embed = nn.Parameter(width ** -0.5 * torch.randn(d, 1, width))
        if spec.spectral_spg:
            graph = spatial_temporal_graph(spec.tokens_in, d, wide=spec.tokens_in >= 100)
            self.register_buffer('spg', graph, persistent=True)
        else:
            self.spg = None

    def _initial_cluster_embed(self, positional_embedding: Optional[torch.Tensor]) -> torch.Tensor:
        k, width = self.spec.tokens_out, self.spec.width
        if not self.spec.embed_from_clip:
            return width ** -0.5 * torch.randn(k, width)
        if positional_embedding is None:
            raise ValueError("--cluser_embed_from_clip 1 needs the image tower's positional_embedding "
                             "to initialise cluster_embed; pass it to TokenCluster")
        if positional_embedding.shape[0] < k + 1 or positional_embedding.shape[1] != width:
            raise ValueError(f"--cluser_embed_from_clip: positional_embedding {tuple(positional_embedding.shape)} "
                             f"cannot initialise a ({k}, {width}) cluster embedding from rows 1..{k}")
        return positional_embedding.detach()[1:k + 1].float().clone()

    def extra_repr(self) -> str:
        s = self.spec
        return (f"{s.algorithm}, block={s.block}, frames {s.frames_in}->{s.frames_out}, "
                f"tokens {s.tokens_in}->{s.tokens_out}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B·frames_in, 1 + n, W) -> (B·frames_out, 1 + K, W) (pooling and shifts keep n)."""
        s = self.spec
        if x.shape[0] % s.frames_in:
            raise ValueError(f"resblocks.{s.block}: {x.shape[0]} rows are not a multiple of {s.frames_in} frames")
        if s.algorithm in CLUSTERING:
            return self._cluster(x)
        if s.algorithm == 'pooling':
            return segment_mean(x, s.frames_in, s.frames_out)
        if s.algorithm == 'sparse_sampling':
            return sparse_sample(x, s.frames_in, s.frames_out, s.tokens_out, self.training)
        if s.algorithm == 'temporal_shift':
            return temporal_shift(x, s.frames_in)
        return token_shift(x, s.frames_in)

    def post_attention(self, x: torch.Tensor) -> torch.Tensor:
        """The original shifts [CLS] again after attention for token_shift; identity otherwise."""
        if self.spec.algorithm == 'token_shift':
            return token_shift(x, self.spec.frames_in)
        return x

    @torch.no_grad()
    def medoid_indices(self, x: torch.Tensor) -> torch.Tensor:
        """The medoids the forward pass picks for x (B·frames_in, 1 + n, W), e.g. to draw them.

        Returns (B, frames_out, K) int64: indices into each segment's d·n tokens in frame-major order
        (token j is token j % n, [CLS] excluded, of the segment's frame j // n). k-medoids and spectral only.
        """
        s = self.spec
        if s.algorithm not in CLUSTERING:
            raise ValueError(f"resblocks.{s.block}: {s.algorithm} has no medoids")
        _, medoids = self._cluster_in_chunks(self._segment_tokens(x))
        return medoids.reshape(s.frames_out, -1, s.tokens_out).transpose(0, 1)

    def _segment_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """(B·frames_in, 1 + n, W) -> (M, N, W) = (frames_out·B, d·n, W) without [CLS], segment-major as the
        original: row s·B + b holds the d·n tokens of segment s of video b."""
        s = self.spec
        rows, length, width = x.shape
        tokens = x[:, 1:].reshape(rows // s.frames_in, s.frames_out, s.segment_frames * (length - 1), width)
        return tokens.transpose(0, 1).reshape(-1, s.segment_frames * (length - 1), width)

    def _cluster(self, x: torch.Tensor) -> torch.Tensor:
        s = self.spec
        rows, _, width = x.shape
        batch, f_out, k = rows // s.frames_in, s.frames_out, s.tokens_out
        cls = segment_mean(x[:, :1], s.frames_in, f_out)  # (B·f_out, 1, W)
        if s.aggregation is None:
            _, medoids = self._cluster_in_chunks(self._segment_tokens(x.detach()))
            kept = self._medoid_tokens(x, medoids)  # (B·f_out, K, W)
        else:
            tokens = self._segment_tokens(x)  # (M, N, W)
            assignment, _ = self._cluster_in_chunks(tokens)
            kept = cluster_means(tokens, assignment, k)  # (M, K, W)
            kept = kept.reshape(f_out, batch, k, width).transpose(0, 1).reshape(batch * f_out, k, width)
        if s.cluster_embedding:
            kept = kept + self.cluster_embed.to(kept.dtype)
        return torch.cat([cls, kept], dim=1)

    def _medoid_tokens(self, x: torch.Tensor, medoids: torch.Tensor) -> torch.Tensor:
        """The medoids' tokens read straight from x (B·frames_in, 1 + n, W) into the output layout
        (B·frames_out, K, W), row b·frames_out + s. One index_select: backward keeps only the indices
        (a gather from the segment-major copy would keep that copy, as large as x).
        medoids: (M, K), row s·B + b, indices into the segment's d·n tokens (see _segment_tokens)."""
        s = self.spec
        rows, length, width = x.shape
        batch, n = rows // s.frames_in, length - 1
        medoids = medoids.view(s.frames_out, batch, -1).transpose(0, 1)  # (B, f_out, K)
        video = torch.arange(batch, device=x.device).view(-1, 1, 1)
        segment = torch.arange(s.frames_out, device=x.device).view(1, -1, 1)
        row = video * s.frames_in + segment * s.segment_frames + medoids // n  # (B, f_out, K) rows of x
        flat = row * length + 1 + medoids % n  # skip each frame's [CLS]
        return x.reshape(rows * length, width).index_select(0, flat.flatten()).view(batch * s.frames_out, -1, width)

    def _cluster_in_chunks(self, tokens: torch.Tensor):
        """Run the algorithm on consecutive chunks of spec.chunk_size segments, as the original does:
        the distance shift and the stop rule are per chunk. All chunks run in one batched call
        (`chunk_size`), which gives each chunk the result of a call of its own.
        tokens: (M, N, W) -> (M, N), (M, K)."""
        s = self.spec
        if s.spectral_spg and tokens.shape[1] != self.spg.shape[-1]:
            raise ValueError(f"resblocks.{s.block}: {tokens.shape[1]} tokens per segment, but the spatio-temporal "
                             f"graph (--spectral_spg) was built for {self.spg.shape[-1]}")
        if s.algorithm == 'spectral':
            return batch_spectral(
                tokens, s.tokens_out, graph=s.spectral_graph, knn_k=s.spectral_knn_k, sigma=s.spectral_sigma,
                distance=s.distance, norm_p=s.norm_p, threshold=s.threshold, iter_limit=s.iter_limit,
                correct_sign=s.svd_correct_sign, spatial_temporal_graph=self.spg, chunk_size=s.chunk_size)
        return batch_kmedoids(tokens, s.tokens_out, distance=s.distance, norm_p=s.norm_p, pre_norm=s.pre_norm,
                              threshold=s.threshold, iter_limit=s.iter_limit, chunk_size=s.chunk_size)


def cluster_means(tokens: torch.Tensor, assignment: torch.Tensor, k: int) -> torch.Tensor:
    """Mean of each cluster's tokens, differentiable in tokens, computed in fp32.

    tokens: (M, N, W), assignment: (M, N). Returns (M, k, W) in tokens' dtype. An empty cluster,
    which the original would turn into NaN (0 / 0), gives zeros here.
    """
    with torch.autocast(device_type=tokens.device.type, enabled=False):
        one_hot = nn.functional.one_hot(assignment, k).float()  # (M, N, K)
        sums = torch.bmm(one_hot.transpose(1, 2), tokens.float())  # (M, K, W)
        counts = one_hot.sum(dim=1).unsqueeze(-1).clamp(min=1.0)  # (M, K, 1)
        return (sums / counts).to(tokens.dtype)


def build_token_clusters(specs: Sequence[Optional[ClusterSpec]],
                         positional_embedding: Optional[torch.Tensor] = None) -> List[Optional[TokenCluster]]:
    """One TokenCluster (or None) per block, ready for `VisionTransformer.set_block_hooks`."""
    return [None if spec is None else TokenCluster(spec, positional_embedding) for spec in specs]
