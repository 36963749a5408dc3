"""Which frames of a video become the T frames of a clip: retrieval (SPEC §5) and X-CLIP
recognition (XCLIP_SPEC §3.3).

Every rule here is a function of the number of frames N; ``decode.decode_clip`` takes such a
rule (e.g. ``functools.partial(xclip_view_indices, num_segments=8, num_clips=2)``) and calls it
once the video's N is known.

Randomness: training sampling draws from numpy's legacy global RNG (``np.random``), as the
original does, unless a ``np.random.RandomState`` is passed. PyTorch's DataLoader reseeds
numpy's global RNG in every worker from a base seed that is drawn anew for each epoch, so
different workers and different epochs sample different frames; with ``num_workers=0`` the
main process's RNG simply advances.
"""
import numpy as np


def tsn_indices(num_frames, num_segments, rng=None):
    """TSN multi-segment sampling used in training.

    The video is cut into ``num_segments`` equal segments of ``avg = num_frames // T`` frames
    and one random frame is drawn from each. Shorter videos take frames 0..num_frames-1 and
    repeat the last one. (The original has a third branch, "T sorted distinct random indices
    when num_frames > T", guarded by ``avg == 0``; ``avg`` is 0 only when num_frames < T, so
    that branch never runs and is not reproduced.)

    Args:
        num_frames: frames available, >= 1.
        num_segments: T, the number of frames to return.
        rng: a ``np.random.RandomState`` or None for numpy's global RNG.
    Returns:
        int64 array [T] of frame indices in [0, num_frames).
    """
    rng = np.random if rng is None else rng
    avg = num_frames // num_segments
    if avg > 0:
        offsets = np.arange(num_segments) * avg + rng.randint(avg, size=num_segments)
        return offsets.astype(np.int64)
    return np.clip(np.arange(num_segments), 0, num_frames - 1).astype(np.int64)


def uniform_indices(num_frames, num_segments):
    """Uniform sampling used in evaluation: the centre of each of T equal segments.

    Returns:
        int64 array [T]: ``int(tick / 2 + tick * t)`` with ``tick = num_frames / T`` when
        num_frames > T, else frames 0..num_frames-1 with the last one repeated.
    """
    if num_frames > num_segments:
        tick = num_frames / float(num_segments)
        return np.array([int(tick / 2.0 + tick * t) for t in range(num_segments)], dtype=np.int64)
    return np.clip(np.arange(num_segments), 0, num_frames - 1).astype(np.int64)


def sample_indices(num_frames, num_segments, train, rng=None):
    """TSN sampling when ``train`` else uniform sampling; int64 array [T]."""
    if train:
        return tsn_indices(num_frames, num_segments, rng)
    return uniform_indices(num_frames, num_segments)


def xclip_test_indices(num_frames, num_segments):
    """X-CLIP's evaluation rule for one clip: the centre of each of T equal segments.

    ``index_t = floor(t * a + a / 2)`` with ``a = N / T`` (float), taken mod N; short videos
    repeat frames (N = 3, T = 8 -> 0 0 0 1 1 2 2 2). N = 0 gives zeros.

    Returns:
        int64 array [T].
    """
    return xclip_view_indices(num_frames, num_segments, 1)


def xclip_view_indices(num_frames, num_segments, num_clips):
    """Deterministic multi-view sampling (XCLIP_SPEC §3.3 FIX): C clips of T frames.

    Clip j takes ``index_{j,t} = floor(t * a + (2j + 1) * a / (2C))``, ``a = N / T``, in float64
    and in exactly this order (t * a; (2j + 1) * a, then / (2C); then the sum), taken mod N.
    The original draws C random training clips instead, which cannot be reproduced. C = 1 is
    ``xclip_test_indices``.

    Returns:
        int64 array [C * T]: clip 0's T indices, then clip 1's, ...
    """
    if num_frames <= 0:
        return np.zeros(num_clips * num_segments, dtype=np.int64)
    a = num_frames / float(num_segments)
    t = np.arange(num_segments, dtype=np.float64)
    shifts = (2 * np.arange(num_clips, dtype=np.float64) + 1) * a / (2 * num_clips)  # (C,)
    indices = np.floor(t[None, :] * a + shifts[:, None]).astype(np.int64)  # (C, T)
    return np.mod(indices, num_frames).reshape(-1)


def xclip_train_indices(num_frames, num_segments, rng=None):
    """X-CLIP's training rule (XCLIP_SPEC §3.3), one clip of T frames.

    ``a = N // T``. When a > 0 each segment gives ``t * a + r_t``, r_t uniform in 0..a-1 (one
    ``randint(a, size=T)`` call on numpy's global RNG unless ``rng`` is given). When N < T the
    indices are deterministic: ``round_half_even(t * N / T)`` (N = 5, T = 8 -> 0 1 1 2 2 3 4 4).
    Taken mod N; N = 0 gives zeros.

    Returns:
        int64 array [T].
    """
    if num_frames <= 0:
        return np.zeros(num_segments, dtype=np.int64)
    rng = np.random if rng is None else rng
    a = num_frames // num_segments
    if a > 0:
        indices = np.arange(num_segments) * a + rng.randint(a, size=num_segments)
    else:
        indices = np.around(np.arange(num_segments) * (num_frames / float(num_segments)))
    return np.mod(indices.astype(np.int64), num_frames)


def window_range(start_time, end_time, fps, header_frames, decoded_frames):
    """Frames kept by a time window, as a half-open range of frame indices.

    The original keeps frame ``i`` when ``int(start * fps) <= i <= min(int(end * fps), N)``
    with N = ``stream.frames`` (the end is inclusive). FIX: when the header reports 0 frames
    the decoded count is used for N instead, so the window is not cut to frame 0.

    Args:
        start_time, end_time: window in seconds.
        fps: the stream's average frame rate.
        header_frames: ``stream.frames`` (may be 0).
        decoded_frames: frames the video actually has.
    Returns:
        (first, stop) with ``first <= stop``; the window's frames are ``range(first, stop)``.
    """
    first = max(0, int(start_time * fps))
    cap = header_frames if header_frames > 0 else decoded_frames
    last = min(int(end_time * fps), cap)
    stop = min(last + 1, decoded_frames)
    return first, max(first, stop)


def clip_length(num_frames, header_frames):
    """``min(stream.frames, frames available)``, with the FIX for ``stream.frames == 0``."""
    if header_frames > 0:
        return min(header_frames, num_frames)
    return num_frames


def valid_length(num_frames, num_segments):
    """Number of real (unmasked) frames of a clip: ``min(num_frames, T)``."""
    return min(num_frames, num_segments)

