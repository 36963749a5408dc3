"""Few-shot and zero-shot data protocols of X-CLIP (XCLIP_SPEC §5). The original ships no split
files; these functions make the subsets reproducibly and write them down.

- Few-shot (``few_shot_subset``): K training videos per class drawn with ``random.Random(seed)``;
  the builder of the training loader writes the list it used (``write_video_list``).
- Zero-shot evaluation: ``zero_shot_pairs`` pairs ``--zero_shot_lists`` with
  ``--zero_shot_labels``; ``zero_shot_summary`` gives the mean and the population std of top-1.
- Kinetics-600 zero-shot splits (``write_zero_shot_splits``): the K600 classes whose exact name
  is not a K400 class, then random splits of 160 of them, each as a labels CSV + list file.
"""
import csv
import io
import os
import random

import numpy as np

from .annotations import AnnotationError
from .video_list import LabelledVideo, read_class_names, read_video_list


def few_shot_subset(videos, *, class_names, shots, seed):
    """K videos per class, the same for a given list, K and seed.

    Rule: ``rng = random.Random(seed)``; for every class k = 0, 1, ... in order,
    ``rng.sample(videos of class k in list order, K)``; the chosen videos are returned in list
    order. Every rank of a distributed run must pass the same seed (not seed + rank).

    Args:
        videos: list of ``LabelledVideo`` (labels in 0..len(class_names) - 1).
        class_names: the labels CSV's names (for the count and for messages).
        shots: K >= 1.
        seed: int.
    Returns:
        list of K * len(class_names) ``LabelledVideo``.
    Raises:
        ValueError naming the first class with fewer than K videos (also 0).
    """
    if shots < 1:
        raise ValueError(f"--shots must be at least 1 for a few-shot subset, got {shots}")
    by_class = [[] for _ in class_names]
    for position, video in enumerate(videos):
        by_class[video.label].append(position)
    rng = random.Random(seed)
    chosen = []
    for label, positions in enumerate(by_class):
        if len(positions) < shots:
            raise ValueError(f"--shots {shots}: class {label} ({class_names[label]!r}) has only "
                             f"{len(positions)} training video(s)")
        chosen += rng.sample(positions, shots)
    return [videos[position] for position in sorted(chosen)]


def _write_atomically(path, text):
    """Write ``text`` to ``path`` through a temporary file and a rename (no half-written file)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    temporary = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    with open(temporary, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(temporary, path)


def write_video_list(path, videos):
    """Write ``videos`` (``LabelledVideo`` with the paths as they should appear) as a list file,
    one ``path label`` line each, atomically."""
    _write_atomically(path, "".join(f"{video.path} {video.label}\n" for video in videos))


def write_class_names(path, names):
    """Write a labels CSV (header ``id,name``, ids 0..K-1 in row order, csv quoting), atomically."""
    buffer = io.StringIO()
    rows = [["id", "name"]] + [[k, name] for k, name in enumerate(names)]
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    _write_atomically(path, buffer.getvalue())


def zero_shot_pairs(lists, labels):
    """Pair ``--zero_shot_lists L1 L2 ...`` with ``--zero_shot_labels``.

    Args:
        lists: list-file paths (at least one).
        labels: labels-CSV paths: one for every list, or exactly one shared by all.
    Returns:
        list of (list path, labels CSV path), in the order of ``lists``.
    Raises:
        ValueError naming the flags when a side is missing or the counts do not match.
    """
    if not lists:
        raise ValueError("--zero_shot_lists names no list file")
    if not labels:
        raise ValueError("--zero_shot_lists needs --zero_shot_labels: one labels CSV for all lists, "
                         "or one per list")
    if len(labels) == 1:
        return [(path, labels[0]) for path in lists]
    if len(labels) != len(lists):
        raise ValueError(f"--zero_shot_labels gives {len(labels)} CSVs for {len(lists)} "
                         f"--zero_shot_lists; give one CSV for all lists or one per list")
    return list(zip(lists, labels))


def zero_shot_summary(top1s):
    """Mean and standard deviation of the per-split top-1 accuracies.

    The std is numpy's default, the population std (``ddof=0``): sqrt(mean((x - mean)^2)).

    Returns:
        (mean, std) as floats.
    """
    values = np.asarray(top1s, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"zero_shot_summary needs a non-empty list of accuracies, got {top1s!r}")
    return float(values.mean()), float(values.std(ddof=0))


def novel_classes(names, seen_names):
    """Indices (ascending) of the classes in ``names`` whose exact name is not in ``seen_names``."""
    seen = set(seen_names)
    return [k for k, name in enumerate(names) if name not in seen]


def sample_class_splits(candidates, *, n_splits, split_size, seed):
    """``n_splits`` independent random choices of ``split_size`` classes among ``candidates``.

    Rule: ``rng = random.Random(seed)``; split i = ``sorted(rng.sample(candidates, split_size))``
    for i = 0, 1, ... (splits may overlap, as in ER-ZSAR's protocol).

    Returns:
        list of ``n_splits`` ascending lists of class indices.
    """
    if not 1 <= split_size <= len(candidates):
        raise ValueError(f"cannot draw {split_size} classes per split from {len(candidates)} candidates")
    rng = random.Random(seed)
    return [sorted(rng.sample(list(candidates), split_size)) for _ in range(n_splits)]


def write_zero_shot_splits(*, labels_csv, seen_labels_csv, list_path, out_dir, n_splits=3,
                           split_size=160, seed=0):
    """Kinetics-600 zero-shot splits: classes of ``labels_csv`` absent (by exact name) from
    ``seen_labels_csv``, ``n_splits`` random choices of ``split_size`` of them
    (``sample_class_splits``), each written as ``zero_shot_split{i}_labels.csv`` (i = 1, 2, ...; the chosen
    classes in ascending original order, ids 0..split_size-1) and ``zero_shot_split{i}.txt`` (the lines of
    ``list_path`` whose class is chosen, in list order, relabelled to the split's row).

    With the shipped CSVs, 232 K600 names are not K400 names; the paper's 220 also treats 12
    renamed K400 classes as seen, which exact names cannot tell.

    Args:
        labels_csv: the K600 labels CSV; seen_labels_csv: the K400 one.
        list_path: a list file labelled with ``labels_csv``'s indices (e.g. K600 validation).
        out_dir: where the files go (created).
        n_splits, split_size, seed: the split draw.
    Returns:
        dict: ``novel`` (count of novel classes), ``splits`` (list of (labels CSV, list file)).
    """
    names = read_class_names(labels_csv)
    novel = novel_classes(names, read_class_names(seen_labels_csv))
    videos = read_video_list(list_path, "", len(names))  # root "" keeps the relative paths
    written = []
    for i, classes in enumerate(sample_class_splits(novel, n_splits=n_splits, split_size=split_size,
                                                    seed=seed)):
        row = {label: k for k, label in enumerate(classes)}
        kept = [LabelledVideo(v.path, row[v.label]) for v in videos if v.label in row]
        if not kept:
            raise AnnotationError(f"{list_path} has no video of the classes of split {i}")
        csv_path = os.path.join(out_dir, f"zero_shot_split{i + 1}_labels.csv")  # the names xclip_zero_shot.sh reads
        split_list = os.path.join(out_dir, f"zero_shot_split{i + 1}.txt")
        write_class_names(csv_path, [names[label] for label in classes])
        write_video_list(split_list, kept)
        written.append((csv_path, split_list))
    return {"novel": len(novel), "splits": written}
