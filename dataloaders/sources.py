"""Start-up check that a split's videos are where the flags say, before any batch is read."""
import logging
import os

from .video_reader import LmdbVideos

logger = logging.getLogger(__name__)


def check_video_source(paths, lmdb_path=None, flag=None, sample=5):
    """Look for the first ``sample`` distinct videos of a split: files, or in LMDB mode keys
    (their base names) of the LMDB at ``lmdb_path``, which is checked first (``check_lmdb``).

    A wrong folder or LMDB fails here, at start-up; a few missing videos do not (they read as
    broken videos, masked blank clips), they are logged.

    Args:
        paths: the split's video paths, in split order.
        lmdb_path: the LMDB of ``--lmdb_dataset``, or None to look for files.
        flag: the flag named in messages; default ``--lmdb_dataset`` or ``--features_path``.
        sample: how many distinct paths to look for.
    Returns:
        the number of sampled videos found (at least one).
    Raises:
        FileNotFoundError naming the flag and the first missing video when none is found;
        ValueError when ``paths`` is empty; BrokenLmdbError for an unusable LMDB.
    """
    flag = flag or ("--lmdb_dataset" if lmdb_path else "--features_path")
    sampled = list(dict.fromkeys(paths))[:sample]
    if not sampled:
        raise ValueError(f"no video to look for under {flag}: the split is empty")
    if lmdb_path:
        store = LmdbVideos(lmdb_path)
        missing = [path for path in sampled if store.get(os.path.basename(path)) is None]
    else:
        missing = [path for path in sampled if not os.path.isfile(path)]
    if len(missing) == len(sampled):
        raise FileNotFoundError(f"none of the first {len(sampled)} videos of the split is in {flag}: "
                                f"{_absent(missing[0], lmdb_path, flag)}; check {flag}")
    if missing:
        logger.warning("%d of the first %d videos of the split are missing (%s); they will read as "
                       "broken videos: %s", len(missing), len(sampled), flag, ", ".join(missing))
    return len(sampled) - len(missing)


def _absent(path, lmdb_path, flag):
    """What is missing for ``path``: its LMDB key, or the file (and its folder)."""
    if lmdb_path:
        return f"{flag} {lmdb_path} has no key {os.path.basename(path)!r} (for {path})"
    folder = os.path.dirname(path)
    return f"{path} does not exist" + ("" if os.path.isdir(folder) else f" (nor does {folder})")
