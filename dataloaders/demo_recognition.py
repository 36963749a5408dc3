"""Video recognition demo data (`--task_type recognition --datatype video_list`): no download.

Short real H.264 videos drawn with the retrieval demo's code (`dataloaders/demo.py`): a large
coloured shape on a background. The class is what the shape is and what it does, e.g. "circle moves up" or
"square grows": 4 shapes x 5 motions = 20 classes. Colour (8) and background (4) vary within a
class, so neither tells the class. The motions are the same when mirrored left-right, because
X-CLIP's training flips videos horizontally half of the time (XCLIP_SPEC §3.4): "moves left"
against "moves right" could not be learned. Up/down and grows/shrinks differ only in the order of
the frames, so the classes need the model's temporal parts, not one frame.

Written once, by `ensure_generated(data_dir)` or `python -m dataloaders.demo_recognition
--data_dir DIR`, into `<DIR>/demo_recognition/` (a temporary folder renamed when complete, so an
interrupted generation is redone), in X-CLIP's formats (XCLIP_SPEC §3.1):

    videos/NNNN.mp4    20 videos per class (12 frames of 224 x 224 at 3 fps)
    videos.csv         what each video shows: video,label,name,colour,background,split
    labels.csv         the 20 classes (id,name; class index = row order)
    train.txt          16 videos per class (320); each class's videos have distinct colour and
    val.txt            background pairs, so val's 4 per class (80) are pairs unseen in training
  zero-shot variant: for each motion one shape is held out (5 unseen classes, one per motion; each
  shape and each motion still occurs in training with other partners):
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

SHAPES = demo.SHAPES
MOTIONS = ("moves up", "moves down", "stays still", "grows", "shrinks")
VIDEOS_PER_CLASS, VAL_PER_CLASS = 20, 4
FOLDER = "demo_recognition"
FILES = ("videos.csv", "labels.csv", "train.txt", "val.txt", "labels_seen.csv", "train_seen.txt", "val_seen.txt",
         "labels_unseen.csv", "val_unseen.txt")


def class_name(shape, motion):
    return f"{shape} {motion}"


def classes():
    """[(shape, motion)] in class-index order: motion-major (class = 4·motion + shape)."""
    return [(shape, motion) for motion in MOTIONS for shape in SHAPES]


def unseen_classes():
    """The held-out (shape, motion) pairs: motion m with shape m mod 4 (a diagonal, so every shape
    and every motion keeps seen partners)."""
    return [(SHAPES[m % len(SHAPES)], motion) for m, motion in enumerate(MOTIONS)]


def trajectory(motion, rng):
    """(centre x, centre y, radius), each float [FRAMES], of a shape doing `motion`. Shapes are large
    (radius 34-44 px: several of the model's 32-pixel patches wide) and travel 80-100 px up or down,
    stay, or grow from a radius of 12-18 to 52-60 px in place (shrink: the reverse)."""
    t = np.linspace(0, 1, demo.FRAMES)
    if motion in ("grows", "shrinks"):
        small, large = rng.uniform(12, 18), rng.uniform(52, 60)
        radius = small + (large - small) * (t if motion == "grows" else 1 - t)
    else:
        radius = np.full(demo.FRAMES, rng.uniform(34, 44))
    margin = 1.3 * radius.max() + 2  # the diamond reaches 1.3 radii from its centre
    travel = {"moves up": -1, "moves down": 1}.get(motion, 0) * rng.uniform(80, 100)
    cx = np.full(demo.FRAMES, rng.uniform(margin, demo.SIZE - margin))
    start = rng.uniform(margin + max(0.0, -travel), demo.SIZE - margin - max(0.0, travel))
    return cx, start + travel * t, radius


def action_frames(colour, shape, motion, background, rng):
    """uint8 [FRAMES, SIZE, SIZE, 3]: one video of class (shape, motion), drawn with the retrieval
    demo's backgrounds and shapes."""
    cx, cy, radius = trajectory(motion, rng)
    frames = np.repeat(demo.background_image(background, rng)[None], demo.FRAMES, axis=0)
    for t in range(demo.FRAMES):
        frames[t][demo.shape_mask(shape, cx[t], cy[t], radius[t])] = demo.COLOURS[colour]
    return frames


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

    Each class's videos take distinct (colour, background) pairs drawn with `seed`; the first
    `val_per_class` of them are validation videos. Every video's drawing has its own generator
    seeded with (seed, class, video), so the files depend only on the arguments.
    """
    pairs = list(itertools.product(demo.COLOURS, demo.BACKGROUNDS))
    if not 0 < val_per_class < videos_per_class <= len(pairs):
        raise ValueError(f"need 0 < val_per_class < videos_per_class <= {len(pairs)}, got "
                         f"{val_per_class} and {videos_per_class}")
    os.makedirs(os.path.join(root, "videos"))
    train, val, rows = [], [], []  # (relative path, class index); videos.csv rows
    for label, (shape, motion) in enumerate(classes()):
        order = np.random.default_rng([seed, label]).permutation(len(pairs))[:videos_per_class]
        for k, pair in enumerate(order):
            video = f"{label * videos_per_class + k:04d}.mp4"
            colour, background = pairs[pair]
            rng = np.random.default_rng([seed, label, k])
            demo.write_h264(os.path.join(root, "videos", video), action_frames(colour, shape, motion, background, rng))
            (val if k < val_per_class else train).append((video, label))
            rows.append((video, label, class_name(shape, motion), colour, background,
                         "val" if k < val_per_class else "train"))
    with open(os.path.join(root, "videos.csv"), "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["video", "label", "name", "colour", "background", "split"])
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
