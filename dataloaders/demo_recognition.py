"""Video recognition demo data (`--task_type recognition --datatype video_list`): no download.

Short real H.264 videos drawn with the retrieval demo's code (`dataloaders/demo.py`): a shape moving
over a background, whose colour changes half-way. The class is that change, e.g. "red turns blue":
5 colours give 20 ordered pairs = 20 classes. "red turns blue" and "blue turns red" show the same
colours for the same time, so the classes need the order of the frames (the model's temporal parts),
not one frame or their average. Shape (4), background (4) and motion (the retrieval demo's 5, moving
left or right included: the class does not depend on the horizontal flips of X-CLIP's training)
vary within a class and tell nothing about it. Colour is the class, so the demo trains without
X-CLIP's colour jitter and grayscale (`--color_jitter 0 --gray_scale 0`).

Written once, by `ensure_generated(data_dir)` or `python -m dataloaders.demo_recognition
--data_dir DIR`, into `<DIR>/demo_recognition/` (a temporary folder renamed when complete, so an
interrupted generation is redone), in X-CLIP's formats (XCLIP_SPEC §3.1):

    videos/NNNN.mp4    20 videos per class (12 frames of 224 x 224 at 3 fps; colour 1 in frames
                       0-5, colour 2 in frames 6-11)
    videos.csv         what each video shows: video,label,name,shape,background,motion,split
    labels.csv         the 20 classes (id,name; class index = row order)
    train.txt          16 videos per class (320); each class's videos have distinct (shape,
    val.txt            background, motion) triples, so val's 4 per class (80) are triples unseen
                       in that class's training videos
  zero-shot variant: 5 changes held out (red turns green, green turns blue, blue turns yellow,
  yellow turns white, white turns red), so every colour still starts and ends 3 seen classes:
    labels_seen.csv    the 15 seen classes, renumbered 0..14 in labels.csv's order
    train_seen.txt     train.txt's videos of the seen classes (240), labels of labels_seen.csv
    val_seen.txt       val.txt's videos of the seen classes (60)
    labels_unseen.csv  the 5 held-out classes, numbered 0..4
    val_unseen.txt     every video of the held-out classes (100): names never trained on
"""
import argparse
import csv
import itertools
import os
import shutil
import sys
import tempfile

import numpy as np

from . import demo

COLOURS = ("red", "green", "blue", "yellow", "white")
CHANGE_FRAME = demo.FRAMES // 2  # the first frame in the second colour
VIDEOS_PER_CLASS, VAL_PER_CLASS = 20, 4
FOLDER = "demo_recognition"
FILES = ("videos.csv", "labels.csv", "train.txt", "val.txt", "labels_seen.csv", "train_seen.txt", "val_seen.txt",
         "labels_unseen.csv", "val_unseen.txt")


def class_name(first, second):
    return f"{first} turns {second}"


def classes():
    """[(first colour, second colour)] in class-index order: first-colour-major."""
    return [(first, second) for first in COLOURS for second in COLOURS if first != second]


def unseen_classes():
    """The held-out changes: each colour to the next one in COLOURS (a cycle, so every colour keeps
    seen classes as first and as second colour)."""
    return [(colour, COLOURS[(k + 1) % len(COLOURS)]) for k, colour in enumerate(COLOURS)]


def change_frames(first, second, shape, motion, background, seed):
    """uint8 [FRAMES, SIZE, SIZE, 3]: the retrieval demo's scene (shape, motion, background drawn from
    `seed`) in colour `first` up to CHANGE_FRAME, in colour `second` from there on."""
    before = demo.scene_frames(first, shape, motion, background, np.random.default_rng(seed))
    after = demo.scene_frames(second, shape, motion, background, np.random.default_rng(seed))
    return np.concatenate([before[:CHANGE_FRAME], after[CHANGE_FRAME:]])


def write_labels(path, names):
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["id", "name"])
        writer.writerows(enumerate(names))


def write_list(path, items):
    """items: [(relative path, label)] -> lines `relative/path label`."""
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(f"{video} {label}\n" for video, label in items)


def generate(root, seed=0, videos_per_class=VIDEOS_PER_CLASS, val_per_class=VAL_PER_CLASS):
    """Write the videos and every list and labels file (module docstring) into the new folder `root`.

    Each class's videos take distinct (shape, background, motion) triples drawn with `seed`; the
    first `val_per_class` of them are validation videos. Every video's drawing is seeded with
    (seed, class, video), so the files depend only on the arguments.
    """
    triples = list(itertools.product(demo.SHAPES, demo.BACKGROUNDS, demo.MOTIONS))
    if not 0 < val_per_class < videos_per_class <= len(triples):
        raise ValueError(f"need 0 < val_per_class < videos_per_class <= {len(triples)}, got "
                         f"{val_per_class} and {videos_per_class}")
    os.makedirs(os.path.join(root, "videos"))
    train, val, rows = [], [], []  # (relative path, class index); videos.csv rows
    for label, (first, second) in enumerate(classes()):
        order = np.random.default_rng([seed, label]).permutation(len(triples))[:videos_per_class]
        for k, triple in enumerate(order):
            video = f"{label * videos_per_class + k:04d}.mp4"
            shape, background, motion = triples[triple]
            frames = change_frames(first, second, shape, motion, background, [seed, label, k])
            demo.write_h264(os.path.join(root, "videos", video), frames)
            split = "val" if k < val_per_class else "train"
            (val if split == "val" else train).append((video, label))
            rows.append((video, label, class_name(first, second), shape, background, motion, split))
    with open(os.path.join(root, "videos.csv"), "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["video", "label", "name", "shape", "background", "motion", "split"])
        writer.writerows(rows)
    write_splits(root, train, val)


def write_splits(root, train, val):
    """labels.csv, train.txt, val.txt and the zero-shot variant's files, from the full splits."""
    names = [class_name(*c) for c in classes()]
    unseen = {names.index(class_name(*c)) for c in unseen_classes()}
    seen_ids = {label: i for i, label in enumerate(k for k in range(len(names)) if k not in unseen)}
    unseen_ids = {label: i for i, label in enumerate(sorted(unseen))}
    write_labels(os.path.join(root, "labels.csv"), names)
    write_list(os.path.join(root, "train.txt"), train)
    write_list(os.path.join(root, "val.txt"), val)
    write_labels(os.path.join(root, "labels_seen.csv"), [names[k] for k in seen_ids])
    write_list(os.path.join(root, "train_seen.txt"), [(v, seen_ids[k]) for v, k in train if k in seen_ids])
    write_list(os.path.join(root, "val_seen.txt"), [(v, seen_ids[k]) for v, k in val if k in seen_ids])
    write_labels(os.path.join(root, "labels_unseen.csv"), [names[k] for k in unseen_ids])
    every_video = sorted(train + val)
    write_list(os.path.join(root, "val_unseen.txt"), [(v, unseen_ids[k]) for v, k in every_video if k in unseen_ids])


def is_complete(root):
    return all(os.path.isfile(os.path.join(root, name)) for name in FILES)


def ensure_generated(data_dir, seed=0):
    """`<data_dir>/demo_recognition`, generated on first use. A folder left incomplete (by another
    version, or by hand) is replaced; a temporary folder of an interrupted run is removed."""
    root = os.path.join(data_dir, FOLDER)
    if is_complete(root):
        return root
    os.makedirs(data_dir, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{FOLDER}-", dir=data_dir)
    try:
        generate(tmp, seed=seed)
        if os.path.exists(root):
            shutil.rmtree(root)
        os.replace(tmp, root)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp)
    return root


def main(argv=None):
    parser = argparse.ArgumentParser(description="Write the recognition demo's videos, list files and labels "
                                                 "CSVs into <data_dir>/demo_recognition (once).")
    parser.add_argument("--data_dir", default="data", help="parent folder (default: data)")
    args = parser.parse_args(argv)
    root = ensure_generated(args.data_dir)
    print(root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
