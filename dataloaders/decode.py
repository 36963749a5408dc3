"""Decode the sampled frames of a video with PyAV, decoding only what they need.

The original decodes every frame of a video and keeps T of them. Here the first video
stream's packets are demuxed once (cheap: no decoding), which gives every frame's
presentation timestamp and the keyframes. When those packets can be trusted, only the
groups of pictures (GOPs) that hold a sampled frame are decoded: each from its keyframe up
to the last sampled frame in it, then the decoder is drained and flushed before the next
group. Frame i in presentation order is the packet with the i-th smallest pts, so the
frames are bit-identical to a full decode, which the decoded pts are checked against.
When anything is doubtful the whole stream is decoded in order, as the original does.

Decoding restarts only at "restart points": keyframes such that every packet before them
in decode order shows earlier and every packet from them on shows later. Open-GOP
keyframes, whose leading pictures reference the previous group, fail this test and are
never used, so a restart cannot change a frame.
"""
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
        """Decode the frames at presentation indices ``wanted``.

        Returns:
            dict presentation index -> ``av.VideoFrame`` covering every wanted index.
        Raises:
            _PlanMismatch: the decoder did not return the predicted frames.
        """
        wanted_set = set(int(i) for i in wanted)
        frames = {}
        for start, stop in self.plan(wanted):
            expected = np.sort(np.array([p.pts for p in self.packets[start:stop]], dtype=np.int64))
            got = _decode_packets(codec_context, self.packets[start:stop])
            if [f.pts for f in got] != expected.tolist():
                raise _PlanMismatch(f"packets {start}:{stop} decoded to unexpected frames")
            for frame in got:
                index = int(np.searchsorted(self.sorted_pts, frame.pts))
                if index in wanted_set:
                    frames[index] = frame
        return frames


def _decode_packets(codec_context, packets):
    """Feed ``packets`` to the decoder, drain it and reset it; returns the frames in output order."""
    frames = []
    for packet in packets:
        frames.extend(codec_context.decode(packet))
    frames.extend(codec_context.decode(None))
    codec_context.flush_buffers()
    return frames


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


def _choose(total, header_frames, num_segments, train, window, stream, rng):
    """Absolute frame indices [T] and the number of frames they were sampled from."""
    first, stop = 0, total
    if window is not None:
        first, stop = window_range(window[0], window[1], _frame_rate(stream), header_frames, total)
    num_frames = clip_length(stop - first, header_frames)
    if num_frames <= 0:
        raise VideoDecodeError("the video (or its time window) has no frames")
    return sample_indices(num_frames, num_segments, train, rng) + first, num_frames


def _to_rgb_stack(frames, indices):
    """uint8 [T, H, W, 3] RGB of ``frames[i]`` for i in ``indices`` (each frame converted once)."""
    rgb = {}
    for i in indices.tolist():
        if i not in rgb:
            rgb[i] = frames[i].to_rgb().to_ndarray()
    if len({a.shape for a in rgb.values()}) != 1:
        raise VideoDecodeError("the sampled frames differ in size")
    return np.stack([rgb[i] for i in indices.tolist()])


def read_frames(source, num_segments, train, window=None, rng=None, thread_type="SLICE", seek=True):
    """Sample T frames of the first video stream of ``source``.

    Args:
        source: a file path or a binary file-like object (e.g. ``io.BytesIO`` of LMDB bytes).
        num_segments: T.
        train: TSN sampling when True, uniform sampling otherwise.
        window: optional (start_seconds, end_seconds).
        rng: ``np.random.RandomState`` or None for numpy's global RNG (training sampling).
        thread_type: FFmpeg threading: "SLICE" (PyAV's default; x264 files have one slice per
            frame, so this decodes on one thread), "FRAME" or "AUTO" (frame threading). On
            224-pixel frames frame threading measured slower (benchmarks/bench_decode.py):
            its per-frame hand-offs cost more than such small frames take to decode, and the
            pipeline is drained after every group of pictures.
        seek: decode only the needed groups of pictures when the packets allow it.
    Returns:
        (frames, num_frames): uint8 [T, H, W, 3] RGB frames at stored size, and the number of
        frames (of the window) sampled from, so the valid length is ``min(num_frames, T)``.
    Raises:
        av.FFmpegError, OSError, VideoDecodeError for videos that cannot be read.
    """
    with av.open(source) as container:
        if not container.streams.video:
            raise VideoDecodeError("no video stream")
        stream = container.streams.video[0]
        stream.thread_type = thread_type
        header_frames = stream.frames
        packets = _demux(container, stream)
        if seek and PacketIndex.is_trustworthy(packets, header_frames):
            index = PacketIndex(packets)
            if index.restarts.size and index.restarts[0] == 0:
                indices, num_frames = _choose(index.num_frames, header_frames, num_segments,
                                              train, window, stream, rng)
                try:
                    decoded = index.decode(stream.codec_context, indices)
                    return _to_rgb_stack(decoded, indices), num_frames
                except _PlanMismatch:
                    pass  # fall through to the sequential decode, which defines the answer
        frames = _decode_packets(stream.codec_context, packets)
        indices, num_frames = _choose(len(frames), header_frames, num_segments, train, window,
                                      stream, rng)
        return _to_rgb_stack(frames, indices), num_frames
