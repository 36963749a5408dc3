"""Pack a folder of videos into an LMDB: key = file base name (bytes), value = the file's bytes.

    python preprocess/folder2lmdb.py --video_folder VIDEOS --lmdb_path videos.lmdb

Sub-folders are walked; only videos are packed (the extensions of ``compress_video``, e.g. not
its ``compress_failures.txt``; ``--all_files`` takes every file). Base names must be unique
because they are the keys the data loaders look up (``--lmdb_dataset``). The result is a
directory-style LMDB at ``--lmdb_path``.
"""
import argparse
import os
import sys

import lmdb
from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run as a script
from dataloaders.annotations import walk_files  # noqa: E402
from preprocess.compress_video import VIDEO_EXTENSIONS  # noqa: E402

COMMIT_EVERY = 256  # files per write transaction: bounds the dirty pages held at once


def list_files(folder, extensions=VIDEO_EXTENSIONS):
    """Every file under ``folder`` (sub-folders included) whose name ends in one of
    ``extensions`` (None: every file), sorted, checked for unique base names.

    Returns:
        list of paths.
    Raises:
        ValueError: two files share a base name (they would share an LMDB key).
    """
    by_name = {}
    for path in walk_files(folder, extensions):
        name = os.path.basename(path)
        if name in by_name:
            raise ValueError(f"two files share the base name {name!r}, which is the LMDB key: "
                             f"{by_name[name]} and {path}; rename one of them")
        by_name[name] = path
    return [by_name[name] for name in sorted(by_name)]


def folder_to_lmdb(video_folder, lmdb_path, map_size_gb=1024.0, progress=True,
                   extensions=VIDEO_EXTENSIONS):
    """Write every video under ``video_folder`` into a new LMDB at ``lmdb_path``.

    Args:
        video_folder: folder to walk.
        lmdb_path: output directory of the LMDB.
        map_size_gb: the LMDB's maximum size in GiB (address space, not disk, on Linux).
        progress: show a tqdm progress bar.
        extensions: lower-case suffixes of the files to pack, or None for every file.
    Returns:
        number of files written.
    Raises:
        FileNotFoundError: ``video_folder`` does not exist.
        ValueError: no file to pack, duplicate base names, or the map size is too small (names
            the flag).
    """
    if not os.path.isdir(video_folder):
        raise FileNotFoundError(f"--video_folder {video_folder} is not a directory")
    files = list_files(video_folder, extensions)
    if not files:
        wanted = "file" if extensions is None else f"video ({' '.join(extensions)}; --all_files takes any file)"
        raise ValueError(f"--video_folder {video_folder} holds no {wanted}")
    map_size = int(map_size_gb * (1 << 30))
    env = lmdb.open(lmdb_path, subdir=True, map_size=map_size, readonly=False, meminit=False)
    txn = env.begin(write=True)
    try:
        for count, path in enumerate(tqdm(files, desc="folder2lmdb", unit="file",
                                          disable=not progress), start=1):
            with open(path, "rb") as f:
                txn.put(os.path.basename(path).encode(), f.read())
            if count % COMMIT_EVERY == 0:
                txn.commit()
                txn = env.begin(write=True)
        txn.commit()
        env.sync()
    except lmdb.MapFullError as error:
        txn.abort()
        total = sum(os.path.getsize(p) for p in files) / (1 << 30)
        raise ValueError(f"the LMDB map size ({map_size_gb:g} GiB) is too small for {len(files)} "
                         f"files of {total:.3g} GiB; rerun with a larger --map_size_gb "
                         f"(at least {2 * total:.3g})") from error
    finally:
        env.close()
    return len(files)


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--video_folder", required=True, help="folder of videos (walked recursively)")
    parser.add_argument("--lmdb_path", required=True, help="output LMDB directory")
    parser.add_argument("--map_size_gb", type=float, default=1024.0,
                        help="maximum LMDB size in GiB (default 1024; only address space on Linux)")
    parser.add_argument("--all_files", action="store_true",
                        help=f"pack every file, not only the extensions {' '.join(VIDEO_EXTENSIONS)}")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        count = folder_to_lmdb(args.video_folder, args.lmdb_path, args.map_size_gb,
                               extensions=None if args.all_files else VIDEO_EXTENSIONS)
    except (FileNotFoundError, ValueError) as error:
        sys.exit(f"folder2lmdb: {error}")
    print(f"wrote {count} {'files' if args.all_files else 'videos'} to {args.lmdb_path}")
    return count


if __name__ == "__main__":
    main()
