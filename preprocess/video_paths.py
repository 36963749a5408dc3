"""Write the `video_path.json` that LSMDC and ActivityNet read: {video id: path relative to the
video folder}, found by walking the folder.

    python preprocess/video_paths.py --video_folder lsmdc/video --out lsmdc/video_path.json
    python preprocess/video_paths.py --video_folder activitynet/videos --out activitynet/video_path.json \
        --strip_prefix v_

A video's id is its file name without the extension (LSMDC clip ids; ActivityNet ids without
`v_`, hence `--strip_prefix v_` for files named `v_XXXXXXXXXXX.mp4`).
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run as a script
from dataloaders.annotations import walk_files  # noqa: E402
from preprocess.compress_video import VIDEO_EXTENSIONS  # noqa: E402


def video_paths(video_folder, strip_prefix=""):
    """{id: relative path} of every video under `video_folder` (sub-folders walked, sorted)."""
    if not os.path.isdir(video_folder):
        raise FileNotFoundError(f"--video_folder {video_folder} is not a folder")
    paths = {}
    for path in walk_files(video_folder, VIDEO_EXTENSIONS):
        stem = os.path.splitext(os.path.basename(path))[0]
        if strip_prefix and stem.startswith(strip_prefix):
            stem = stem[len(strip_prefix):]
        relative = os.path.relpath(path, video_folder)
        if stem in paths:
            raise ValueError(f"two videos have the id {stem!r}: {paths[stem]} and {relative}")
        paths[stem] = relative
    return paths


def write_json(obj, path):
    """Write to a temporary file beside `path`, then rename: never a half-written file."""
    tmp = f"{path}.part"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--video_folder", required=True, help="the folder given to main.py as --features_path")
    parser.add_argument("--out", required=True, help="the JSON to write (<data_path>/video_path.json)")
    parser.add_argument("--strip_prefix", default="", help="removed from the start of file names (v_ for ActivityNet)")
    args = parser.parse_args(argv)
    try:
        paths = video_paths(args.video_folder, args.strip_prefix)
    except (FileNotFoundError, ValueError) as err:
        parser.error(str(err))
    if not paths:
        parser.error(f"--video_folder {args.video_folder} holds no video ({', '.join(VIDEO_EXTENSIONS)})")
    write_json(paths, args.out)
    print(f"{len(paths)} videos -> {args.out}")
    return paths


if __name__ == "__main__":
    main(sys.argv[1:])
