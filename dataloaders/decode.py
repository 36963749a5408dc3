"""Decode the sampled frames of a video with PyAV, decoding only what they need.

The original decodes every frame of a video and keeps T of them. Here the first video
stream's packets are demuxed once (cheap: no decoding), which gives every frame's
presentation timestamp and the keyframes. When those packets can be trusted, only the
groups of pictures (GOPs) that hold a sampled frame are decoded: each from its keyframe up
to the last sampled frame in it, then the decoder is drained and flushed before the next
group. Frame i in presentation order is the packet with the i-th smallest pts, so the
frames are bit-identical to a full decode, which the decoded pts are checked against.
When anything is doubtful the whole stream is decoded in order, as the original does.

Memory: each sampled frame is converted (e.g. resized and cropped) as soon as the decoder
returns it and every other frame is dropped at once, so a clip holds its T converted frames
and at most a few decoded ones (the decoder's own delay), whatever the video's resolution and
group-of-pictures length.

Decoding restarts only at "restart points": keyframes such that every packet before them
in decode order shows earlier and every packet from them on shows later. Open-GOP
keyframes, whose leading pictures reference the previous group, fail this test and are
never used, so a restart cannot change a frame.
"""
from contextlib import closing
from functools import partial

import av
import numpy as np

from .sampling import clip_length, sample_indices, window_range


class VideoDecodeError(RuntimeError):
    """A video that cannot give a clip (no video stream, no frames, inconsistent frames)."""


class _PlanMismatch(Exception):
    """Decoding a packet range did not give the frames the packet index predicted."""


class PacketIndex:
    """The packets of one video stream in decode order and where decoding can restart.

    Attributes:
        packets: list of ``av.Packet`` (non-empty ones), decode order.
        order: int64 [N]; ``order[i]`` is the decode position of the i-th frame shown.
        sorted_pts: int64 [N]; pts of the i-th frame shown.
        restarts: int64 [R]; decode positions of restart points, ascending. At a restart
            point the decode position equals the presentation index.
    """

    def __init__(self, packets):
        self.packets = packets
        pts = np.array([p.pts for p in packets], dtype=np.int64)
        self.order = np.argsort(pts, kind="stable")
        self.sorted_pts = pts[self.order]
        keyframe = np.array([p.is_keyframe for p in packets], dtype=bool)
        # prefix_max[k] = max pts before position k; suffix_min[k] = min pts from k on.
        prefix_max = np.concatenate([[np.iinfo(np.int64).min], np.maximum.accumulate(pts)[:-1]])
        suffix_min = np.minimum.accumulate(pts[::-1])[::-1]
        clean = keyframe & (prefix_max < pts) & (pts == suffix_min)
        self.restarts = np.flatnonzero(clean).astype(np.int64)

    @staticmethod
    def is_trustworthy(packets, header_frames):
        """True when the packets must decode to exactly one frame each, in pts order.

        Requires the container's frame count to agree with the packet count (so
        ``stream.frames == 0`` always takes the sequential path), a pts on every packet,
        distinct pts, and no packet flagged to be discarded (edit lists).
        """
        if header_frames <= 0 or len(packets) != header_frames:
            return False
        if any(p.pts is None or p.is_discard for p in packets):
            return False
        return len({p.pts for p in packets}) == len(packets)

    @property
    def num_frames(self):
        return len(self.packets)

    def plan(self, wanted):
        """Packet ranges to decode so that every wanted frame comes out.

        A wanted frame needs the packets from its group's restart point up to its own packet.
        Groups that follow each other directly are merged into one range.

        Args:
            wanted: presentation indices, any order, repeats allowed.
        Returns:
            list of (start, stop) decode positions, ascending and disjoint; each starts at a
            restart point.
        """
        wanted = np.unique(wanted)
        group_starts = self.restarts[np.searchsorted(self.restarts, wanted, side="right") - 1]
        stops = {}
        for start, index in zip(group_starts.tolist(), wanted.tolist()):
            stops[start] = max(stops.get(start, 0), int(self.order[index]) + 1)
        ranges = []
        for start in sorted(stops):
            if ranges and ranges[-1][1] == start:
                ranges[-1][1] = stops[start]
            else:
                ranges.append([start, stops[start]])
        return [tuple(r) for r in ranges]

    def decode(self, codec_context, wanted):
        """Decode the groups of pictures that hold the presentation indices ``wanted``.

        Yields:
            (presentation index, ``av.VideoFrame``) for every frame decoded, in output order,
            each checked against the packet index before it is yielded.
        Raises:
            _PlanMismatch: the decoder did not return the predicted frames.
        """
        for start, stop in self.plan(wanted):
            expected = np.sort(np.array([p.pts for p in self.packets[start:stop]], dtype=np.int64))
            count = 0
            with closing(_decode_packets(codec_context, self.packets[start:stop])) as frames:
                for frame in frames:
                    if count == len(expected) or frame.pts != expected[count]:
                        raise _PlanMismatch(f"packets {start}:{stop} decoded to unexpected frames")
                    count += 1
                    yield int(np.searchsorted(self.sorted_pts, frame.pts)), frame
            if count != len(expected):
                raise _PlanMismatch(f"packets {start}:{stop} gave {count} of {len(expected)} frames")


def _decode_packets(codec_context, packets):
    """Yield the frames of ``packets`` in output order, then drain and reset the decoder (also
    when the caller stops early)."""
    try:
        for packet in packets:
            yield from codec_context.decode(packet)
        yield from codec_context.decode(None)
    finally:
        codec_context.flush_buffers()


def _demux(container, stream):
    """The stream's non-empty packets in decode order; a truncated file is an error."""
    packets = [p for p in container.demux(stream) if p.size > 0]
    for position, packet in enumerate(packets):
        if packet.is_corrupt:
            # FFmpeg flags a packet whose bytes could not all be read (a cut-off file).
            raise VideoDecodeError(f"packet {position} is incomplete: the file is truncated or damaged")
    return packets


def _frame_rate(stream):
    rate = stream.average_rate or stream.guessed_rate
    if not rate:
        raise VideoDecodeError("the video stream has no frame rate, needed for a time window")
    return float(rate)


def _choose(total, header_frames, sampler, window, stream):
    """Absolute frame indices [K] (``sampler`` applied to the window) and the number of frames
    they were sampled from."""
    first, stop = 0, total
    if window is not None:
        first, stop = window_range(window[0], window[1], _frame_rate(stream), header_frames, total)
    num_frames = clip_length(stop - first, header_frames)
    if num_frames <= 0:
        raise VideoDecodeError("the video (or its time window) has no frames")
    indices = np.asarray(sampler(num_frames), dtype=np.int64)
    if indices.ndim != 1 or indices.size == 0 or indices.min() < 0 or indices.max() >= num_frames:
        raise ValueError(f"the sampler gave indices {indices} for {num_frames} frames")
    return indices + first, num_frames


def _convert_wanted(pairs, wanted, convert):
    """Convert the frames whose index is in ``wanted``, each as soon as it arrives.

    Args:
        pairs: iterable of (index, ``av.VideoFrame``).
        wanted: set of indices.
        convert: uint8 [H, W, 3] RGB -> anything.
    Returns:
        (dict index -> converted frame, number of pairs seen).
    """
    converted, size, seen = {}, None, 0
    for index, frame in pairs:
        seen += 1
        if index not in wanted:
            continue
        if size is not None and size != (frame.height, frame.width):
            raise VideoDecodeError("the sampled frames differ in size")
        size = (frame.height, frame.width)
        converted[index] = convert(frame.to_rgb().to_ndarray())
    return converted, seen


def _decode_in_order(codec_context, packets, choose, convert):
    """Decode the whole stream in order, as the original does, keeping only the sampled frames.

    The sampled indices depend on the number of decoded frames, known only at the end. They are
    chosen first for one frame per packet (true for any undamaged stream) and kept while
    decoding; if the decoder returns another count, the stream is decoded a second time with
    the indices for that count (then a random sampler draws twice).

    Returns:
        (dict index -> converted frame, (indices [K], num_frames)).
    """
    try:
        guess = choose(len(packets))
    except VideoDecodeError:
        guess = None
    wanted = set(guess[0].tolist()) if guess is not None else set()
    with closing(_decode_packets(codec_context, packets)) as frames:
        converted, count = _convert_wanted(enumerate(frames), wanted, convert)
    if guess is not None and count == len(packets):
        return converted, guess
    indices, num_frames = choose(count)
    with closing(_decode_packets(codec_context, packets)) as frames:
        converted, _ = _convert_wanted(enumerate(frames), set(indices.tolist()), convert)
    return converted, (indices, num_frames)


def _unchanged(frame):
    return frame


def decode_clip(source, sampler, convert=None, window=None, thread_type="SLICE", seek=True):
    """Decode the frames a sampling rule picks from the first video stream of ``source``.

    Args:
        source: a file path or a binary file-like object (e.g. ``io.BytesIO`` of LMDB bytes).
        sampler: the frame-index rule, a callable N -> int array [K] of indices in [0, N)
            (any K >= 1, repeats allowed), called once N is known, e.g.
            ``partial(sampling.xclip_view_indices, num_segments=8, num_clips=2)``.
        convert: applied to each distinct sampled frame (uint8 [H, W, 3] RGB at stored size) as
            soon as it is decoded, e.g. a resize and crop, so the clip never holds full-size
            frames; None keeps the RGB frames.
        window: optional (start_seconds, end_seconds); indices are then relative to the window.
        thread_type: FFmpeg threading: "SLICE" (PyAV's default; x264 files have one slice per
            frame, so this decodes on one thread), "FRAME" or "AUTO" (frame threading). On
            224-pixel frames frame threading measured slower (benchmarks/bench_decode.py):
            its per-frame hand-offs cost more than such small frames take to decode, and the
            pipeline is drained after every group of pictures.
        seek: decode only the needed groups of pictures when the packets allow it.
    Returns:
        (frames, num_frames): a list of K converted frames, ``frames[k]`` for the k-th sampled
        index (a repeated index repeats the same object), and the number of frames (of the
        window) sampled from.
    Raises:
        av.FFmpegError, OSError, VideoDecodeError for videos that cannot be read.
    """
    convert = _unchanged if convert is None else convert
    with av.open(source) as container:
        if not container.streams.video:
            raise VideoDecodeError("no video stream")
        stream = container.streams.video[0]
        stream.thread_type = thread_type
        header_frames = stream.frames
        choose = partial(_choose, header_frames=header_frames, sampler=sampler, window=window,
                         stream=stream)
        packets = _demux(container, stream)
        if seek and PacketIndex.is_trustworthy(packets, header_frames):
            index = PacketIndex(packets)
            if index.restarts.size and index.restarts[0] == 0:
                indices, num_frames = choose(index.num_frames)
                try:
                    pairs = index.decode(stream.codec_context, indices)
                    converted, _ = _convert_wanted(pairs, set(indices.tolist()), convert)
                    return [converted[i] for i in indices.tolist()], num_frames
                except _PlanMismatch:
                    pass  # fall through to the sequential decode, which defines the answer
        converted, (indices, num_frames) = _decode_in_order(stream.codec_context, packets, choose,
                                                            convert)
        return [converted[i] for i in indices.tolist()], num_frames


def read_frames(source, num_segments, train, window=None, rng=None, thread_type="SLICE", seek=True):
    """Retrieval's T frames (SPEC §5) at stored size: ``decode_clip`` with TSN sampling when
    ``train`` (``rng``: a ``np.random.RandomState`` or None for numpy's global RNG), uniform
    sampling otherwise.

    Returns:
        (frames, num_frames): uint8 [T, H, W, 3] RGB frames and the number of frames (of the
        window) sampled from, so the valid length is ``min(num_frames, T)``.
    """
    sampler = partial(sample_indices, num_segments=num_segments, train=train, rng=rng)
    frames, num_frames = decode_clip(source, sampler, window=window, thread_type=thread_type,
                                     seek=seek)
    return np.stack(frames), num_frames
