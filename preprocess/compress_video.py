"""Re-encode videos for training: a lower frame rate, a 224-pixel shorter side, H.264 in MP4.

    python preprocess/compress_video.py --input_root RAW --output_root VIDEOS [--fps 3 --size 224]

Sub-folders of ``--input_root`` are mirrored under ``--output_root``. Everything runs through
PyAV (its wheels carry FFmpeg and libx264), so no ``ffmpeg`` binary is needed. Only the first
video stream is kept; audio and subtitles are dropped.

The decoded frames go through an FFmpeg filter graph: ``fps`` with its defaults picks frames by
timestamp (each input frame's time, counted from the first frame, is rounded to the nearest
output slot; an output frame shows the last input frame rounded to its slot or earlier; the
input ends one input frame period after its last frame, so a 10 s clip gives 30 frames at 3 fps
whatever its rate), then ``scale`` (bicubic) and ``format`` make yuv420p frames of the output
size. Timestamps are read from the packets (see ``presentation_times``).

An output is written under a temporary name and renamed when complete, so an interrupted run
never leaves a file that looks finished; existing outputs are skipped on the next run. A bad
input does not stop the run: failures are listed at the end and written to a file.
"""
import argparse
import math
import os
import sys
from dataclasses import dataclass
from fractions import Fraction
from multiprocessing import Pool

import av
import av.filter
from tqdm import tqdm

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".3gp", ".mpg", ".mpeg", ".m4v",
                    ".flv", ".wmv", ".ogv", ".ts")
NAMINGS = ("replace", "append", "keep")
PARTIAL_SUFFIX = ".part"  # an output still being written; never counted as done


class InputError(ValueError):
    """An input that cannot give a video: no video stream, no frames, truncated data."""


@dataclass(frozen=True)
class EncodeOptions:
    """How every output is encoded (see ``build_parser`` for each field's meaning)."""
    fps: Fraction = Fraction(3)
    size: int = 224
    keyint: int = 6
    crf: int = 23
    preset: str = "medium"
    threads: int = 1


def check_options(options):
    """Raise ValueError naming the flag when ``options`` cannot be encoded."""
    if options.size < 2 or options.size % 2:
        raise ValueError(f"--size must be even and >= 2 for yuv420p, got {options.size}")
    if options.keyint < 1:
        raise ValueError(f"--keyint must be >= 1, got {options.keyint}")


def output_size(width, height, size):
    """(width, height) with the shorter side ``size`` and the aspect ratio kept.

    The longer side is scaled by the same factor and truncated to an even number (yuv420p
    needs even sizes), as the original's FFmpeg filter does for landscape videos. (Its
    expression for portrait videos multiplies by the aspect ratio instead of dividing, which
    squashes them; here both orientations keep their shape.)
    """
    if width <= height:
        return size, max(2, int(Fraction(height * size, width)) // 2 * 2)
    return max(2, int(Fraction(width * size, height)) // 2 * 2), size


def output_name(name, naming):
    """Output file name: ``replace`` the extension by .mp4 (MSR-VTT and MSVD find videos by
    stem), ``append`` .mp4 (x.3gp -> x.3gp.mp4, as DiDeMo's loader expects) or ``keep`` the
    name (an MP4 inside; FFmpeg probes the content, not the extension)."""
    if naming == "keep":
        return name
    if naming == "append":
        return name + ".mp4"
    return os.path.splitext(name)[0] + ".mp4"


def plan_jobs(input_root, output_root, naming="replace", extensions=VIDEO_EXTENSIONS):
    """(input, output) pairs for every video under ``input_root`` (walked, sorted).

    Args:
        extensions: lower-case suffixes to take, or None for every file.
    Raises:
        ValueError: two inputs would be written to the same output (e.g. x.avi and x.mkv).
    """
    jobs, sources = [], {}
    skip = os.path.realpath(output_root)
    for root, dirs, files in os.walk(input_root):
        # An output folder inside the input folder holds outputs, not inputs.
        dirs[:] = sorted(d for d in dirs if os.path.realpath(os.path.join(root, d)) != skip)
        for name in sorted(files):
            if extensions is not None and not name.lower().endswith(tuple(extensions)):
                continue
            source = os.path.join(root, name)
            target = os.path.join(output_root, os.path.relpath(root, input_root), output_name(name, naming))
            target = os.path.normpath(target)
            if target in sources:
                raise ValueError(f"{sources[target]} and {source} would both be written to {target}; "
                                 f"use --naming append or rename one of them")
            sources[target] = source
            jobs.append((source, target))
    return jobs


def first_video_stream(container):
    """The first video stream, checked to have a frame size."""
    if not container.streams.video:
        raise InputError("no video stream")
    stream = container.streams.video[0]
    if not stream.codec_context.width or not stream.codec_context.height:
        raise InputError("the video stream has no frame size")
    return stream


def presentation_times(source):
    """Timestamp (in the stream's time base) of every frame in display order, from the packets.

    The i-th frame shown is the packet with the i-th smallest timestamp: decoders can hand out
    scrambled frame timestamps (AVI files with B-frames do), the packets' are right. Packets
    that are empty or flagged to be discarded (edit lists) are not frames.

    Returns:
        sorted list of ints, or None when a packet has no timestamp.
    Raises:
        InputError: a packet was cut off (truncated or damaged file).
    """
    with av.open(source) as container:
        stream = first_video_stream(container)
        times = []
        for position, packet in enumerate(container.demux(stream)):
            if packet.is_corrupt:
                raise InputError(f"packet {position} is incomplete: the input is truncated or damaged")
            if packet.size == 0 or packet.is_discard:
                continue
            if packet.pts is None:
                return None
            times.append(packet.pts)
    return sorted(times)


def frame_ticks(times, index, period):
    """Timestamp of the ``index``-th frame shown, in ticks from the first frame: its packet's
    (``times`` from ``presentation_times``), else one ``period`` (ticks, a Fraction) after
    the last known frame (no packet times, or more frames than packets)."""
    known = len(times) if times else 0
    if index < known:
        return times[index] - times[0]
    last = times[-1] - times[0] if known else 0
    return last + round((index - max(known, 1) + 1) * period)


def conversion_graph(frame, time_base, options, size):
    """Filter graph ``fps`` (FFmpeg's defaults) -> ``scale`` to ``size`` (bicubic) -> yuv420p,
    fed with frames like ``frame`` timed in ``time_base``."""
    graph = av.filter.Graph()
    graph.threads = options.threads
    graph.link_nodes(
        graph.add_buffer(width=frame.width, height=frame.height, format=frame.format.name, time_base=time_base),
        graph.add("fps", f"fps={options.fps.numerator}/{options.fps.denominator}"),
        graph.add("scale", f"w={size[0]}:h={size[1]}:flags=bicubic"),
        graph.add("format", "pix_fmts=yuv420p"),
        graph.add("buffersink"),
    ).configure()
    return graph


def pulled(graph):
    """The frames the graph has ready."""
    while True:
        try:
            yield graph.vpull()
        except (BlockingIOError, av.error.EOFError):
            return


def converted(frames, times, time_base, input_rate, options, size):
    """Yield the output frames (timestamps 0, 1, ... in 1 / fps) of decoded ``frames``.

    Every frame is timed by ``frame_ticks`` and lasts one input period. The last one, held back
    a step to be known, lasts at least until half an output period, so that an input shorter
    than that still gives one frame (``fps`` alone gives none).
    """
    period = 1 / (input_rate * time_base)  # one input frame, in ticks
    # Ticks n times finer make the period whole, so the input's end is exact (when an AVRational
    # can hold the finer time base).
    n = period.denominator if (time_base / period.denominator).denominator < 2 ** 31 else 1
    time_base, period, times = time_base / n, period * n, times and [t * n for t in times]
    graph = held = None
    for index, frame in enumerate(frames):
        if graph is None:
            graph = conversion_graph(frame, time_base, options, size)
        frame.pts, frame.duration = frame_ticks(times, index, period), max(1, round(period))
        if held is not None:
            graph.vpush(held)
            yield from pulled(graph)
        held = frame
    if held is not None:
        half_slot = math.ceil(1 / (2 * options.fps * time_base))
        held.duration = max(held.duration, half_slot - held.pts)
        graph.vpush(held)
        graph.vpush(None)
        yield from pulled(graph)


def compress_file(source, target, options=EncodeOptions()):
    """Re-encode ``source`` into ``target`` (written as ``target + .part``, then renamed).

    Returns:
        number of frames written.
    Raises:
        av.FFmpegError, OSError, InputError: the input cannot be read (no partial output is left).
    """
    os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
    partial = target + PARTIAL_SUFFIX
    try:
        count = _encode(source, partial, options)
        os.replace(partial, target)
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    return count


def _encode(source, partial, options):
    times = presentation_times(source)  # a first pass over the packets only: no decoding
    with av.open(source) as container:
        stream = first_video_stream(container)
        input_rate = Fraction(stream.average_rate or stream.guessed_rate or options.fps)
        width, height = output_size(stream.codec_context.width, stream.codec_context.height, options.size)
        with av.open(partial, "w", format="mp4") as output:
            encoder = output.add_stream("libx264", rate=options.fps)
            encoder.width, encoder.height, encoder.pix_fmt = width, height, "yuv420p"
            # The data loaders decode only the groups of pictures holding sampled frames, so the
            # keyframe interval bounds the decoding work per sampled frame.
            encoder.codec_context.gop_size = options.keyint
            encoder.codec_context.options = {"preset": options.preset, "crf": str(options.crf),
                                             "threads": str(options.threads)}
            count = 0
            frames = converted(container.decode(stream), times, Fraction(stream.time_base), input_rate,
                               options, (width, height))
            for count, image in enumerate(frames, start=1):
                output.mux(encoder.encode(image))
            if count == 0:
                raise InputError("the input has no decodable video frames")
            output.mux(encoder.encode())
    return count


def _run_job(job):
    """Pool worker: (source, target, options) -> (source, target, frames or None, error or None)."""
    source, target, options = job
    try:
        return source, target, compress_file(source, target, options), None
    except Exception as error:  # one bad input must not stop the others; it is listed instead
        return source, target, None, f"{type(error).__name__}: {error}"


def compress_folder(input_root, output_root, options=EncodeOptions(), workers=1, naming="replace",
                    extensions=VIDEO_EXTENSIONS, overwrite=False, failures_path=None, progress=True):
    """Compress every video under ``input_root``, skipping finished outputs.

    Returns:
        dict with ``done`` (outputs written now), ``skipped`` (already finished) and ``failed``
        (list of (input, error)); the failures are also written to ``failures_path``, one
        ``input<TAB>error`` per line, when there are any (otherwise no file is left there).
    """
    if os.path.realpath(input_root) == os.path.realpath(output_root):
        raise ValueError("--output_root must differ from --input_root (outputs would replace inputs)")
    if not os.path.isdir(input_root):
        raise FileNotFoundError(f"--input_root {input_root} is not a directory")
    jobs = plan_jobs(input_root, output_root, naming, extensions)
    todo = [(s, t, options) for s, t in jobs if overwrite or not os.path.exists(t)]
    done, failed = [], []
    with Pool(max(1, workers)) as pool:
        results = pool.imap_unordered(_run_job, todo)
        for source, target, _, error in tqdm(results, total=len(todo), desc="compress", unit="video",
                                             disable=not progress):
            if error:
                failed.append((source, error))
            else:
                done.append(target)
    failed.sort()
    if failures_path and failed:
        write_failures(failed, failures_path)
    elif failures_path and os.path.exists(failures_path):
        os.remove(failures_path)  # an earlier run's list: its inputs were retried and all succeeded
    return {"done": sorted(done), "skipped": len(jobs) - len(todo), "failed": failed}


def write_failures(failed, path):
    """One ``input<TAB>error`` line per failure, written atomically."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + PARTIAL_SUFFIX, "w") as f:
        f.writelines(f"{source}\t{error}\n" for source, error in failed)
    os.replace(path + PARTIAL_SUFFIX, path)


def positive_fraction(text):
    """argparse type: a positive rational such as 3, 2.5 or 30000/1001."""
    value = Fraction(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--input_root", required=True, help="folder of source videos (walked recursively)")
    parser.add_argument("--output_root", required=True, help="folder for the outputs (mirrors input_root)")
    parser.add_argument("--fps", type=positive_fraction, default=Fraction(3),
                        help="output frame rate, e.g. 3, 2.5 or 30000/1001 (default %(default)s); frames are "
                             "picked by their timestamps, as FFmpeg's fps filter does")
    parser.add_argument("--size", type=int, default=224,
                        help="shorter side in pixels, even (default %(default)s); the aspect ratio is kept")
    parser.add_argument("--keyint", type=int, default=None,
                        help="frames between keyframes (default: 2 s worth, 6 at 3 fps). Training decodes "
                             "from the keyframe before each sampled frame: a short interval makes sparse "
                             "decoding of long videos fast but the files larger; a long one (libx264's "
                             "default is 250) gives smaller files that are decoded almost entirely")
    parser.add_argument("--crf", type=int, default=23,
                        help="libx264 constant rate factor (default %(default)s; lower is better and larger)")
    parser.add_argument("--preset", default="medium",
                        help="libx264 preset, ultrafast ... veryslow (default %(default)s)")
    parser.add_argument("--threads", type=int, default=1,
                        help="libx264 threads per worker, 0 = automatic (default %(default)s)")
    parser.add_argument("--workers", type=int, default=os.cpu_count(),
                        help="parallel encoding processes (default: the number of CPUs)")
    parser.add_argument("--naming", choices=NAMINGS, default="replace",
                        help="output names: replace the extension by .mp4 (default), append .mp4 (DiDeMo), "
                             "or keep the name (an MP4 inside)")
    parser.add_argument("--all_files", action="store_true",
                        help=f"take every file, not only the extensions {' '.join(VIDEO_EXTENSIONS)}")
    parser.add_argument("--overwrite", action="store_true", help="re-encode outputs that already exist")
    parser.add_argument("--failures", default=None,
                        help="file listing failed inputs, written only when one failed "
                             "(default: <output_root>/compress_failures.txt)")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    keyint = args.keyint if args.keyint is not None else max(1, round(2 * args.fps))
    options = EncodeOptions(args.fps, args.size, keyint, args.crf, args.preset, args.threads)
    failures = args.failures or os.path.join(args.output_root, "compress_failures.txt")
    try:
        check_options(options)
        result = compress_folder(args.input_root, args.output_root, options, args.workers, args.naming,
                                 None if args.all_files else VIDEO_EXTENSIONS, args.overwrite, failures)
    except (FileNotFoundError, ValueError) as error:
        sys.exit(f"compress_video: {error}")
    listed = f" (listed in {failures})" if result["failed"] else ""
    print(f"compressed {len(result['done'])}, skipped {result['skipped']} finished, "
          f"failed {len(result['failed'])}{listed}")
    for source, error in result["failed"]:
        print(f"  FAILED {source}: {error}")
    return result


if __name__ == "__main__":
    sys.exit(1 if main()["failed"] else 0)
