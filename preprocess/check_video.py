"""Find videos that training cannot read: decode every video of a folder or an LMDB.

    python preprocess/check_video.py --video_folder VIDEOS          # VIDEOS.broken.txt, VIDEOS.report.csv
    python preprocess/check_video.py --lmdb videos.lmdb --output reports/
    python preprocess/check_video.py --lmdb videos.lmdb --broken_list broken.txt --report frames.json

Each video goes through the project's decoder (``dataloaders.decode.read_frames``, what the
data loaders use), by default decoding every frame so that damage anywhere is found. A video
is ``ok``, ``empty`` (no bytes, or no frames) or ``undecodable`` (anything else that fails,
with the error). Broken videos never stop the scan. Written at the end, beside the input
(``<input>.broken.txt``, ``<input>.report.csv``), or in ``--output`` (``broken_videos.txt``,
``video_report.csv``), or where the two flags below say:

- ``--broken_list``: one broken video per line (its path in folder mode, its key in LMDB
  mode), ready to exclude or re-download;
- ``--report``: every video with its status, frame count, header frame count, size, frame
  rate and error, as CSV or JSON (by the file's extension).

The exit status is 1 when a video is broken, 0 when all are readable.
"""
import argparse
import csv
import io
import json
import os
import statistics
import sys
from multiprocessing import Pool

import av
from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run as a script

from dataloaders.annotations import walk_files  # noqa: E402
from dataloaders.decode import VideoDecodeError, read_frames  # noqa: E402
from dataloaders.video_reader import LmdbVideos, lmdb_keys  # noqa: E402
from preprocess.compress_video import VIDEO_EXTENSIONS  # noqa: E402

FIELDS = ("video", "status", "frames", "header_frames", "width", "height", "fps", "error")


def stream_info(source):
    """Header facts of the first video stream: frames, width, height, fps (0 when unknown)."""
    with av.open(source) as container:
        if not container.streams.video:
            raise VideoDecodeError("no video stream")
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
        return {"header_frames": stream.frames, "width": stream.codec_context.width,
                "height": stream.codec_context.height, "fps": round(float(rate), 3) if rate else 0}


def _open(source):
    """A fresh readable source: the path itself, or a stream over the bytes."""
    return io.BytesIO(source) if isinstance(source, bytes) else source


def _is_empty(source):
    return len(source) == 0 if isinstance(source, bytes) else os.path.getsize(source) == 0


def check_one(source, name, max_frames=12, full=True):
    """Decode one video (``source``: a path, or its bytes; None when absent) as training does.

    Returns:
        a dict with the keys of ``FIELDS``; ``frames`` is the frame count the data loader
        samples from (every frame decoded when ``full``), 0 for broken videos.
    """
    row = dict.fromkeys(FIELDS, "")
    row.update(video=name, status="ok", frames=0)
    try:
        if source is None or _is_empty(source):
            row.update(status="empty", error="no bytes")
            return row
        row.update(stream_info(_open(source)))
        _, row["frames"] = read_frames(_open(source), max_frames, train=False, seek=not full)
    except VideoDecodeError as error:
        status = "empty" if "no frames" in str(error) else "undecodable"
        row.update(status=status, error=f"{type(error).__name__}: {error}")
    except Exception as error:  # any failure is a finding to report, never a reason to stop the scan
        row.update(status="undecodable", error=f"{type(error).__name__}: {error}")
    return row


def _check_path(job):
    path, max_frames, full = job
    return check_one(path, path, max_frames, full)


def _check_key(job):
    lmdb_path, key, max_frames, full = job
    # LmdbVideos opens the environment in this worker process (an environment must not cross fork).
    return check_one(LmdbVideos(lmdb_path).get(key), key, max_frames, full)


def scan(video_folder=None, lmdb_path=None, workers=1, max_frames=12, full=True,
         extensions=VIDEO_EXTENSIONS, progress=True):
    """Check every video of a folder or of an LMDB; returns the rows sorted by video."""
    if (video_folder is None) == (lmdb_path is None):
        raise ValueError("give exactly one of --video_folder and --lmdb")
    if lmdb_path is not None:
        if not os.path.exists(lmdb_path):
            raise FileNotFoundError(f"--lmdb {lmdb_path} does not exist")
        worker, jobs = _check_key, [(lmdb_path, key, max_frames, full) for key in lmdb_keys(lmdb_path)]
    else:
        if not os.path.isdir(video_folder):
            raise FileNotFoundError(f"--video_folder {video_folder} is not a directory")
        worker, jobs = _check_path, [(path, max_frames, full) for path in walk_files(video_folder, extensions)]
    if not jobs:
        raise ValueError(f"{video_folder or lmdb_path} holds no video to check")
    with Pool(max(1, workers)) as pool:
        rows = list(tqdm(pool.imap_unordered(worker, jobs, chunksize=4), total=len(jobs), desc="check",
                         unit="video", disable=not progress))
    return sorted(rows, key=lambda row: row["video"])


def output_paths(args):
    """(broken list, report) paths: the flags, else in ``--output``, else beside the input."""
    if args.output:
        defaults = os.path.join(args.output, "broken_videos.txt"), os.path.join(args.output, "video_report.csv")
    else:
        source = os.path.abspath(args.video_folder or args.lmdb)  # no trailing slash
        defaults = source + ".broken.txt", source + ".report.csv"
    return args.broken_list or defaults[0], args.report or defaults[1]


def write_atomically(path, write):
    """Call ``write(file)`` on a temporary file beside ``path``, then rename it to ``path``."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    partial = path + ".part"
    with open(partial, "w", newline="") as f:
        write(f)
    os.replace(partial, path)


def write_broken_list(rows, path):
    write_atomically(path, lambda f: f.writelines(f"{r['video']}\n" for r in rows if r["status"] != "ok"))


def write_report(rows, path):
    """CSV (header = FIELDS) or, for a .json path, a JSON list of objects."""
    if path.lower().endswith(".json"):
        write_atomically(path, lambda f: json.dump(rows, f, indent=1))
        return

    def write_csv(f):
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    write_atomically(path, write_csv)


def summary(rows):
    """One line: counts per status and the frame counts of the readable videos."""
    counts = {status: sum(r["status"] == status for r in rows) for status in ("ok", "empty", "undecodable")}
    text = f"{len(rows)} videos: {counts['ok']} ok, {counts['empty']} empty, {counts['undecodable']} undecodable"
    frames = [r["frames"] for r in rows if r["status"] == "ok"]
    if frames:
        text += f"; frames min {min(frames)}, median {statistics.median(frames):g}, max {max(frames)}"
    return text


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--video_folder", help="folder of videos (walked recursively)")
    source.add_argument("--lmdb", help="LMDB built by preprocess/folder2lmdb.py (every key is checked)")
    parser.add_argument("--output", help="folder for broken_videos.txt and video_report.csv (default: "
                                         "beside the input, as <input>.broken.txt and <input>.report.csv)")
    parser.add_argument("--broken_list", help="output: one broken video per line, its path or LMDB key "
                                              "(default: see --output)")
    parser.add_argument("--report", help="output: status and frame count of every video, .csv or .json "
                                         "(default: see --output)")
    parser.add_argument("--workers", type=int, default=os.cpu_count(),
                        help="parallel decoding processes (default: the number of CPUs)")
    parser.add_argument("--max_frames", type=int, default=12,
                        help="frames sampled and converted to RGB per video, as --max_frames in "
                             "training (default %(default)s)")
    parser.add_argument("--fast", action="store_true",
                        help="decode only the groups of pictures of the sampled frames (as training "
                             "does) instead of every frame; faster, but damage elsewhere goes unseen")
    parser.add_argument("--all_files", action="store_true",
                        help="in folder mode, check every file, not only video extensions")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        rows = scan(args.video_folder, args.lmdb, args.workers, args.max_frames, not args.fast,
                    None if args.all_files else VIDEO_EXTENSIONS)
    except (FileNotFoundError, ValueError) as error:
        sys.exit(f"check_video: {error}")
    broken_list, report = output_paths(args)
    write_broken_list(rows, broken_list)
    write_report(rows, report)
    print(summary(rows))
    for row in rows:
        if row["status"] != "ok":
            print(f"  {row['status'].upper()} {row['video']}: {row['error']}")
    print(f"broken list: {broken_list}; report: {report}")
    return rows


if __name__ == "__main__":
    sys.exit(1 if any(r["status"] != "ok" for r in main()) else 0)
