"""Video clips for the datasets: files or LMDB in, ``[1, T, 3, S, S]`` tensor and mask out.

A video that cannot be read (missing, empty, truncated, undecodable, or absent from the
LMDB) is logged once per path and process and becomes a zero clip with an all-zero mask,
so an epoch never stops for it. ``count_broken_videos`` counts such clips in a batch.
"""
import io
import logging
import os
from functools import partial

import av
import lmdb
import numpy as np
import torch

from .decode import VideoDecodeError, decode_clip
from .sampling import sample_indices, valid_length
from .transforms import CLIP_MEAN, CLIP_STD, crop_frame, normalise_crops

logger = logging.getLogger(__name__)

# Everything a bad video file can raise; programming errors are not caught.
BROKEN_VIDEO_ERRORS = (av.FFmpegError, OSError, EOFError, VideoDecodeError)
REBUILD_LMDB = "rebuild it with preprocess/folder2lmdb.py"


class BrokenLmdbError(ValueError):
    """A video LMDB as a whole cannot be used: not an LMDB, truncated, empty or unreadable."""


def open_lmdb(path):
    """Open a video LMDB read-only the way SPEC §5 prescribes (no lock, no readahead)."""
    return lmdb.open(path, subdir=os.path.isdir(path), readonly=True, lock=False,
                     readahead=False, meminit=False)


def _open_checked(path):
    """``open_lmdb``, refusing a data file shorter than its meta page says (``last_pgno``):
    reading a page past the end of the mapped file kills the process with SIGBUS."""
    try:
        env = open_lmdb(path)
    except lmdb.Error as error:
        raise BrokenLmdbError(f"LMDB {path} cannot be opened ({type(error).__name__}: {error}); "
                              f"{REBUILD_LMDB}") from None
    data_file = os.path.join(path, "data.mdb") if os.path.isdir(path) else path
    needed, size = (env.info()["last_pgno"] + 1) * env.stat()["psize"], os.path.getsize(data_file)
    if size < needed:
        env.close()
        raise BrokenLmdbError(f"LMDB {path} is truncated: {data_file} has {size} bytes, its header says "
                              f"{needed}; {REBUILD_LMDB}")
    return env


# LMDB allows one open environment per file and process (py-lmdb refuses a second open),
# and an environment must not be used across fork. So this process's environments are
# shared by every reader here and closed just before any fork: a DataLoader worker starts
# with none and opens its own on first use. Maps real path -> (opening pid, environment).
_open_environments = {}


def _environment(path):
    key = os.path.realpath(path)
    if key not in _open_environments:
        _open_environments[key] = (os.getpid(), _open_checked(path))
    return _open_environments[key][1]


def _close_environments():
    for _, env in _open_environments.values():
        env.close()
    _open_environments.clear()


os.register_at_fork(before=_close_environments)


def lmdb_keys(path):
    """All keys of the LMDB at ``path`` as strings (the video files' base names)."""
    try:
        with _environment(path).begin(write=False) as txn:
            return [key.decode() for key in txn.cursor().iternext(keys=True, values=False)]
    except lmdb.Error as error:
        raise BrokenLmdbError(f"LMDB {path}: listing its keys failed ({type(error).__name__}: {error}); "
                              f"{REBUILD_LMDB}") from None


def check_lmdb(path):
    """Fail early with an error naming ``path`` when the video LMDB is missing, not an LMDB,
    truncated, empty or unreadable: open it (size-checked) and read its first entry.

    Returns:
        the number of entries.
    Raises:
        FileNotFoundError, BrokenLmdbError.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"--lmdb_dataset {path} does not exist")
    try:
        with _environment(path).begin(write=False) as txn:
            cursor = txn.cursor()
            if not cursor.first():
                raise BrokenLmdbError(f"LMDB {path} holds no videos; {REBUILD_LMDB}")
            cursor.value()
            return txn.stat()["entries"]
    except lmdb.Error as error:
        raise BrokenLmdbError(f"LMDB {path} cannot be read ({type(error).__name__}: {error}); "
                              f"{REBUILD_LMDB}") from None


class LmdbVideos:
    """Video bytes by base name from an LMDB built by ``preprocess/folder2lmdb.py``.

    The environment is opened on first use in each process (see ``_environment``).
    """

    def __init__(self, path):
        check_lmdb(path)
        self.path = path

    def get(self, name):
        """The bytes stored under ``name`` (a base name), or None when the key is absent.
        A read error of the LMDB (e.g. a corrupt page) is a VideoDecodeError: a broken video."""
        try:
            with _environment(self.path).begin(write=False) as txn:
                return txn.get(name.encode())
        except lmdb.Error as error:
            raise VideoDecodeError(f"reading {name!r} from the LMDB {self.path} failed "
                                   f"({type(error).__name__}: {error})") from None


class VideoReader:
    """Sampled, transformed clips of videos, robust to broken files.

    Args:
        max_frames: T, frames per clip.
        train: TSN sampling (training) or uniform sampling (evaluation).
        lmdb_path: read videos from this LMDB (key = the path's base name) instead of files.
        image_size: side of the square output frames.
        thread_type: FFmpeg decoding threads, see ``decode.read_frames``.
        seek: decode only the groups of pictures that hold sampled frames.
        mean, std: RGB statistics of the normalisation (the model's, OpenAI CLIP's by default).
    """

    def __init__(self, max_frames, train, lmdb_path=None, image_size=224, thread_type="SLICE",
                 seek=True, mean=CLIP_MEAN, std=CLIP_STD):
        self.max_frames = max_frames
        self.train = train
        self.lmdb = LmdbVideos(lmdb_path) if lmdb_path else None
        self.image_size = image_size
        self.mean, self.std = tuple(mean), tuple(std)
        self.thread_type = thread_type
        self.seek = seek
        self._reported = set()

    def __call__(self, path, window=None):
        """Read one clip.

        Args:
            path: the video file (in LMDB mode only its base name is used, as the key).
            window: optional (start_seconds, end_seconds).
        Returns:
            video: float32 tensor [1, T, 3, S, S], zeros for a broken video.
            video_mask: int64 array [1, T], 1 on the first ``min(num_frames, T)`` entries,
                all 0 for a broken video.
        """
        video, mask = self.blank()
        sampler = partial(sample_indices, num_segments=self.max_frames, train=self.train)
        decoded = self.decode(path, sampler, partial(crop_frame, size=self.image_size), window)
        if decoded is None:
            return video, mask
        crops, num_frames = decoded
        video[0] = normalise_crops(torch.stack(crops), self.mean, self.std)
        mask[0, :valid_length(num_frames, self.max_frames)] = 1
        return video, mask

    def decode(self, path, sampler, convert, window=None):
        """``decode.decode_clip`` of one video with this reader's source and settings.

        Returns:
            (frames, num_frames) as ``decode_clip``, or None for a broken video (logged once).
        """
        try:
            return decode_clip(self._source(path), sampler, convert, window=window,
                               thread_type=self.thread_type, seek=self.seek)
        except BROKEN_VIDEO_ERRORS as error:
            self._report(path, error)
            return None

    def blank(self):
        """A blank clip: zeros [1, T, 3, S, S] and an all-zero mask [1, T]."""
        video = torch.zeros(1, self.max_frames, 3, self.image_size, self.image_size)
        return video, np.zeros((1, self.max_frames), dtype=np.int64)

    def _source(self, path):
        if self.lmdb is None:
            return path
        name = os.path.basename(path)
        data = self.lmdb.get(name)
        if data is None:
            raise VideoDecodeError(f"key {name!r} is not in the LMDB {self.lmdb.path}")
        return io.BytesIO(data)

    def _report(self, path, error):
        if path in self._reported:
            return
        self._reported.add(path)
        where = f"{path} (LMDB {self.lmdb.path})" if self.lmdb else path
        logger.warning("broken video %s: %s: %s; using a masked blank clip", where,
                       type(error).__name__, error)


def count_broken_videos(video_mask):
    """Number of clips in a batch whose mask is all zero, i.e. videos that could not be read.

    A readable video always has at least one valid frame, so an all-zero mask row marks a
    blank replacement clip. Sum this over an epoch's batches and report it at the end.

    Args:
        video_mask: tensor or array [B, 1, T] (or [B, T]).
    Returns:
        int.
    """
    mask = torch.as_tensor(video_mask)
    return int((mask.reshape(-1, mask.shape[-1]).sum(-1) == 0).sum())
