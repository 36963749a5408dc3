"""The videos to index: a folder (searched recursively) or an LMDB of `preprocess/folder2lmdb.py`.

Each video has a name (its path relative to the folder, or its LMDB key) and a version stamp that
changes when the video does: size and modification time for a file; for an LMDB entry, which has no
time, its size and a BLAKE2 digest of its first and last MiB (reading every byte of a large LMDB at
each update would cost as much as copying it).
"""
import hashlib
import io
import os
from dataclasses import dataclass
from typing import Optional

import av
import numpy as np

from dataloaders.video_reader import LmdbVideos, lmdb_keys

VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mkv", ".webm", ".avi", ".mov", ".mpg", ".mpeg", ".ts", ".flv", ".wmv", ".3gp")
DIGEST_BYTES = 1 << 20


@dataclass(frozen=True)
class Stamp:
    """A video's version: size in bytes, mtime (files) or digest (LMDB entries)."""
    size: int
    mtime: Optional[float] = None
    digest: Optional[str] = None


class FolderCollection:
    """The video files under `root`, by path relative to it."""
    kind = "folder"

    def __init__(self, root):
        if not os.path.isdir(root):
            raise FileNotFoundError(f"--videos {root} is neither a folder nor an LMDB")
        self.root = os.path.abspath(root)
        self.lmdb_path = None

    def list(self):
        """{name: Stamp} of every video file, sorted by name; symbolic links are followed."""
        found = {}
        for folder, subfolders, files in os.walk(self.root, followlinks=True):
            subfolders.sort()
            for file in files:
                if file.lower().endswith(VIDEO_EXTENSIONS) and not file.startswith("."):
                    path = os.path.join(folder, file)
                    info = os.stat(path)
                    found[os.path.relpath(path, self.root)] = Stamp(info.st_size, mtime=info.st_mtime)
        return dict(sorted(found.items()))

    def path(self, name):
        """What the user sees and the reader opens: the absolute file path."""
        return os.path.join(self.root, name)

    def source(self, name):
        return self.path(name)


class LmdbCollection:
    """The entries of a video LMDB, by key."""
    kind = "lmdb"

    def __init__(self, root):
        self.root = os.path.abspath(root)
        self.lmdb_path = self.root
        self.store = LmdbVideos(self.root)

    def list(self):
        found = {}
        for key in sorted(lmdb_keys(self.root)):
            data = self.store.get(key)
            head_tail = data[:DIGEST_BYTES] + data[-DIGEST_BYTES:]
            found[key] = Stamp(len(data), digest=hashlib.blake2b(head_tail, digest_size=16).hexdigest())
        return found

    def path(self, name):
        """The LMDB key (the reader opens keys of the LMDB)."""
        return name

    def source(self, name):
        data = self.store.get(name)
        if data is None:
            raise FileNotFoundError(f"key {name!r} is not in the LMDB {self.root}")
        return io.BytesIO(data)


def open_videos(root):
    """A FolderCollection, or an LmdbCollection when `root` is an LMDB (a folder holding data.mdb, or
    the data file itself)."""
    is_lmdb = os.path.isfile(os.path.join(root, "data.mdb")) or (os.path.isfile(root) and root.endswith(".mdb"))
    if is_lmdb:
        return LmdbCollection(root)
    if not os.path.exists(root):
        raise FileNotFoundError(f"--videos {root} does not exist")
    return FolderCollection(root)


def probe_duration(source):
    """Duration in seconds of the first video stream of a path or file object: its frame count
    (the header's, else the packets counted) over its frame rate, the same frame clock the reader's
    time windows use.

    Raises:
        av.FFmpegError, OSError, ValueError for a file that is not a readable video.
    """
    with av.open(source) as container:
        if not container.streams.video:
            raise ValueError("no video stream")
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
        if not rate:
            raise ValueError("the video stream has no frame rate")
        frames = stream.frames or sum(1 for packet in container.demux(stream) if packet.size > 0)
    if frames <= 0:
        raise ValueError("the video has no frames")
    return frames / float(rate)


def window_bounds(duration, length, stride):
    """Overlapping windows covering [0, duration]: starts 0, stride, 2·stride, ... and, when the last
    one stops short of the end, one more that ends at the end. A video no longer than `length` is one
    window. Times are rounded to the millisecond (they identify a window).

    Returns:
        list of (start, end) in seconds.
    """
    if duration <= length:
        return [(0.0, round(duration, 3))]
    starts = list(np.arange(0.0, duration - length + 1e-9, stride))
    if starts[-1] + length < duration - 1e-3:
        starts.append(duration - length)
    return [(round(float(s), 3), round(float(s) + length, 3)) for s in starts]
