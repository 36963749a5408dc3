"""Real test videos written with PyAV (H.264 via the libx264 inside PyAV's wheel).

Reusable by any test or benchmark: procedurally drawn frames, H.264 files of any size,
frame count, frame rate and keyframe interval, files whose stream reports ``frames == 0``,
truncated, corrupt and empty files, and a reference full decode.
"""
import os

import av
import numpy as np


def procedural_frames(num_frames, width, height, seed=0):
    """Frames with a panning colour pattern and a moving square, distinct per frame.

    Returns:
        uint8 array [num_frames, height, width, 3] (RGB).
    """
    rng = np.random.default_rng(seed)
    colour = rng.integers(40, 216, size=3)
    phase = rng.uniform(0, 2 * np.pi, size=3)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    scale = np.arange(3, dtype=np.float32)
    angle = xx[..., None] / (17 + 5 * scale) + yy[..., None] / (23 + 3 * scale) + phase  # (H, W, 3)
    background = (127 + 100 * np.sin(angle)).astype(np.uint8)
    side = max(4, min(width, height) // 4)
    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    for t in range(num_frames):
        # A panning background: a shifted copy per frame is cheap and every frame differs.
        frames[t] = np.roll(background, (2 * t, 3 * t), axis=(0, 1))
        top = int((height - side) * (0.5 + 0.5 * np.sin(0.21 * t + phase[0])))
        left = int((width - side) * (0.5 + 0.5 * np.cos(0.17 * t + phase[1])))
        frames[t, top:top + side, left:left + side] = colour
    return frames


def write_video(path, num_frames=None, width=320, height=240, fps=3, frames=None, keyint=12,
                bframes=3, codec_options=None, frame_pts=None, container_format=None,
                container_options=None, seed=0):
    """Write an H.264 (yuv420p) video.

    Args:
        path: output file; the container follows the extension unless ``container_format``.
        num_frames, width, height: size of procedurally drawn frames (ignored with ``frames``).
        fps: frame rate (an int or a Fraction).
        frames: optional uint8 array [N, H, W, 3] to encode instead; H and W must be even.
        keyint: frames between keyframes (libx264 ``keyint``; scene cuts may add more).
        bframes: consecutive B-frames allowed (0 disables frame reordering).
        codec_options: extra libx264 options, e.g. {"x264-params": "open-gop=1"}.
        frame_pts: optional increasing timestamps in units of 1/fps (gaps make a variable
            frame rate); default 0, 1, 2, ...
        container_format: e.g. "matroska" or "mp4" regardless of the extension.
        container_options: muxer options, e.g. {"movflags": "faststart"}.
        seed: seed of the procedural frames.
    Returns:
        path.
    """
    if frames is None:
        frames = procedural_frames(num_frames, width, height, seed)
    height, width = frames.shape[1:3]
    if width % 2 or height % 2:
        raise ValueError(f"H.264 yuv420p needs even sizes, got {width}x{height}")
    with av.open(path, "w", format=container_format, options=container_options or {}) as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.gop_size = keyint
        stream.codec_context.options = {"preset": "veryfast", "bframes": str(bframes),
                                        **(codec_options or {})}
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            if frame_pts is not None:
                frame.pts = int(frame_pts[i])
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return path


def write_video_without_frame_count(path, num_frames, width=320, height=240, fps=3, **kwargs):
    """An H.264 video in a fragmented MP4, whose stream reports ``frames == 0``."""
    options = {"movflags": "frag_keyframe+empty_moov"}
    return write_video(path, num_frames, width, height, fps, container_format="mp4",
                       container_options=options, **kwargs)


def write_truncated_video(path, num_frames=30, keep_fraction=0.6, **kwargs):
    """A valid MP4 with its index in front ("faststart"), cut after ``keep_fraction`` of its bytes."""
    write_video(path, num_frames, container_format="mp4",
                container_options={"movflags": "faststart"}, **kwargs)
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[:int(len(data) * keep_fraction)])
    return path


def write_corrupt_file(path, num_bytes=4096, seed=0):
    """Random bytes under a video name: no container can be opened."""
    with open(path, "wb") as f:
        f.write(np.random.default_rng(seed).integers(0, 256, num_bytes, dtype=np.uint8).tobytes())
    return path


def write_empty_file(path):
    """A zero-byte file."""
    open(path, "wb").close()
    return path


def decode_all_frames(path):
    """Reference: every frame of the first video stream as uint8 [H, W, 3], decoded in order
    with PyAV's defaults and converted like the original (``to_rgb().to_ndarray()``)."""
    with av.open(os.fspath(path)) as container:
        return [frame.to_rgb().to_ndarray() for frame in container.decode(video=0)]


def stream_frame_count(path):
    """``stream.frames`` of the first video stream."""
    with av.open(os.fspath(path)) as container:
        return container.streams.video[0].frames


def write_large_video(path, num_frames, width, height, fps=3, keyint=12):
    """An H.264 video of large frames, drawn and encoded one at a time (little memory): a
    horizontal gradient with a bright square that moves every frame.

    Returns:
        path.
    """
    gradient = np.linspace(0, 255, width, dtype=np.float32).astype(np.uint8)
    with av.open(path, "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.gop_size = keyint
        stream.codec_context.options = {"preset": "ultrafast"}
        side = min(width, height) // 4
        for t in range(num_frames):
            image = np.empty((height, width, 3), dtype=np.uint8)
            image[:] = gradient[None, :, None]
            left = (t * side // 2) % (width - side)
            image[side:2 * side, left:left + side] = (250, 40, 90)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        out.mux(stream.encode())
    return path
