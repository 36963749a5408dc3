"""Which frames of a video become the T frames of a clip (SPEC §5).

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

