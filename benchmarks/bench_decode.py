"""Clips per second: sampling 12 frames with this project's reader vs decoding every frame.

    python benchmarks/bench_decode.py [--runs 7] [--clips 6] [--keyints 6 250] [--json FILE]

Two H.264 videos are written with PyAV into a temporary folder, as a 3 fps, 224-shorter-side
compression would leave them: 15 s (45 frames) and 180 s (540 frames), 398x224, libx264
preset "medium" with B-frames, a keyframe every ``keyint`` frames (default 6 = 2 s, a common
streaming setting; 250 is libx264's default). Methods, timed interleaved in one process:

- ``full``: the original's way: decode every frame (PyAV's default threading), then convert
  the sampled ones to RGB.
- ``full+frame-threads``: the same with FFmpeg frame threading ("AUTO").
- ``reader``: ``dataloaders.decode.read_frames`` as the data loaders use it (demux once,
  decode only the groups of pictures holding sampled frames, PyAV's default threading).
- ``reader+frame-threads``: the same with FFmpeg frame threading ("AUTO").

Every method's frames are checked identical to ``full``'s. Reported: median clips/s over
runs and the speed-up over ``full``.
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import av
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dataloaders.decode import read_frames  # noqa: E402
from dataloaders.sampling import clip_length, sample_indices  # noqa: E402
from tests.video_factory import procedural_frames  # noqa: E402

T = 12
FPS = 3
VIDEO_SECONDS = {"15s": 15, "180s": 180}


def write_benchmark_video(path, num_frames, keyint):
    frames = procedural_frames(num_frames, 398, 224, seed=num_frames)
    with av.open(path, "w") as out:
        stream = out.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = 398, 224, "yuv420p"
        stream.codec_context.gop_size = keyint
        stream.codec_context.options = {"preset": "medium"}
        for image in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        out.mux(stream.encode())


def full_decode(path, train, seed, thread_type=None):
    """The original's approach: every frame decoded, the sampled ones converted."""
    with av.open(path) as container:
        stream = container.streams.video[0]
        if thread_type:
            stream.thread_type = thread_type
        frames = list(container.decode(video=0))
        num_frames = clip_length(len(frames), stream.frames)
        indices = sample_indices(num_frames, T, train, np.random.RandomState(seed))
        return np.stack([frames[i].to_rgb().to_ndarray() for i in indices])


METHODS = {
    "full": lambda path, train, seed: full_decode(path, train, seed),
    "full+frame-threads": lambda path, train, seed: full_decode(path, train, seed, "AUTO"),
    "reader": lambda path, train, seed: read_frames(path, T, train, rng=np.random.RandomState(seed))[0],
    "reader+frame-threads": lambda path, train, seed: read_frames(
        path, T, train, rng=np.random.RandomState(seed), thread_type="AUTO")[0],
}


def time_method(method, path, train, clips, run):
    start = time.perf_counter()
    outputs = [METHODS[method](path, train, 1000 * run + c) for c in range(clips)]
    return clips / (time.perf_counter() - start), outputs


def benchmark(path, train, runs, clips):
    """Median clips/s per method; asserts every method returns the frames of ``full``."""
    rates = {m: [] for m in METHODS}
    for run in range(runs):
        reference = None
        for method in METHODS:
            rate, outputs = time_method(method, path, train, clips, run)
            rates[method].append(rate)
            if reference is None:
                reference = outputs
            elif not all(np.array_equal(a, b) for a, b in zip(outputs, reference)):
                raise AssertionError(f"{method} returned different frames than full decoding on {path}")
    return {m: statistics.median(r) for m, r in rates.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description="video decoding benchmark")
    parser.add_argument("--runs", type=int, default=7, help="repetitions; the median is reported")
    parser.add_argument("--clips", type=int, default=6, help="clips read per method and run")
    parser.add_argument("--keyints", type=int, nargs="+", default=[6, 250],
                        help="keyframe intervals (frames) of the test videos")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory() as folder:
        print(f"{'video':>6} {'keyint':>6} {'sampling':>8} " + " ".join(f"{m:>21}" for m in METHODS))
        for keyint in args.keyints:
            for name, seconds in VIDEO_SECONDS.items():
                path = os.path.join(folder, f"{name}_{keyint}.mp4")
                write_benchmark_video(path, seconds * FPS, keyint)
                for sampling in ("uniform", "tsn"):
                    rates = benchmark(path, sampling == "tsn", args.runs, args.clips)
                    cells = " ".join(f"{rates[m]:12.1f} ({rates[m] / rates['full']:4.2f}x)" for m in METHODS)
                    print(f"{name:>6} {keyint:>6} {sampling:>8} {cells}", flush=True)
                    for method, rate in rates.items():
                        results.append({"video": name, "keyint": keyint, "sampling": sampling,
                                        "method": method, "clips_per_s": rate,
                                        "speedup": rate / rates["full"]})
    print("clips/s (speed-up over full decoding), median of", args.runs, "runs of", args.clips, "clips")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"runs": args.runs, "clips": args.clips, "frames": T, "fps": FPS,
                       "size": "398x224", "results": results}, f, indent=2)
    return results


if __name__ == "__main__":
    main()
