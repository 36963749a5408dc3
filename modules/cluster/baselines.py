"""The paper's baselines for token reduction: segment pooling, sparse sampling, temporal and token shift.

All act on the residual stream of one block, batch-first: x (B·f, 1 + n, W), row b·f + t, token 0 = [CLS].
"""
import torch

SHIFT_FOLD_DIV = 8


def segment_mean(x: torch.Tensor, frames_in: int, frames_out: int) -> torch.Tensor:
    """Token-wise mean over each segment of d = frames_in / frames_out consecutive frames.

    x: (B·frames_in, L, W). Returns (B·frames_out, L, W), row b·frames_out + s.
    """
    rows, length, width = x.shape
    d = frames_in // frames_out
    x = x.reshape(rows // frames_in, frames_out, d, length, width)  # (B, f_out, d, L, W)
    return x.mean(dim=2).reshape(-1, length, width)


def sparse_sampling_indices(k: int, total: int, training: bool) -> torch.Tensor:
    """Indices of k of `total` tokens, one in each of k equal strides (TSN-style).

    Training: stride start + a random offset in [0, total // k) (torch's global generator).
    Eval: the centre of each stride of length total / k. Returns (k,) int64 on the CPU.
    """
    if k == total:
        return torch.arange(k)
    if training:
        stride = total // k
        return torch.arange(k) * stride + torch.randint(stride, (k,))
    tick = total / k
    return torch.tensor([int(tick / 2.0 + tick * i) for i in range(k)])


def sparse_sample(x: torch.Tensor, frames_in: int, frames_out: int, k: int, training: bool) -> torch.Tensor:
    """Segment [CLS] = mean of its frames' [CLS]; k tokens sampled from the segment's d·n tokens.

    Each segment position s draws its own indices, shared by all videos of the batch.
    x: (B·frames_in, 1 + n, W). Returns (B·frames_out, 1 + k, W), row b·frames_out + s.
    """
    rows, length, width = x.shape
    batch, d = rows // frames_in, frames_in // frames_out
    cls = segment_mean(x[:, :1], frames_in, frames_out)
    tokens = x[:, 1:].reshape(batch, frames_out, d * (length - 1), width)  # (B, f_out, d·n, W)
    index = torch.stack([sparse_sampling_indices(k, tokens.shape[2], training)
                         for _ in range(frames_out)]).to(x.device)  # (f_out, k)
    index = index.view(1, frames_out, k, 1).expand(batch, -1, -1, width)
    sampled = tokens.gather(2, index).reshape(batch * frames_out, k, width)
    return torch.cat([cls, sampled], dim=1)


def shift_frames(x: torch.Tensor, frames: int, fold_div: int = SHIFT_FOLD_DIV) -> torch.Tensor:
    """TSM shift along time: channels [0, fold) take the next frame's value, [fold, 2·fold) the
    previous frame's, zero at the ends; fold = W // fold_div. x: (B·frames, L, W), same shape out.
    """
    rows, length, width = x.shape
    fold = width // fold_div
    v = x.reshape(rows // frames, frames, length, width)  # (B, T, L, W)
    edge = v.new_zeros(v.shape[0], 1, length, fold)
    from_next = torch.cat([v[:, 1:, :, :fold], edge], dim=1)
    from_previous = torch.cat([edge, v[:, :-1, :, fold:2 * fold]], dim=1)
    return torch.cat([from_next, from_previous, v[..., 2 * fold:]], dim=-1).reshape(rows, length, width)


def temporal_shift(x: torch.Tensor, frames: int, fold_div: int = SHIFT_FOLD_DIV) -> torch.Tensor:
    """TSM on the non-[CLS] tokens; [CLS] unchanged. x: (B·frames, 1 + n, W)."""
    return torch.cat([x[:, :1], shift_frames(x[:, 1:], frames, fold_div)], dim=1)


def token_shift(x: torch.Tensor, frames: int, fold_div: int = SHIFT_FOLD_DIV) -> torch.Tensor:
    """TSM on the [CLS] token only; the other tokens unchanged. x: (B·frames, 1 + n, W)."""
    return torch.cat([shift_frames(x[:, :1], frames, fold_div), x[:, 1:]], dim=1)
