"""Video recognition data in X-CLIP's formats (XCLIP_SPEC §3): a list file, a labels CSV, videos.

- List file: one video per line, ``relative/path label``: exactly two whitespace-separated
  fields, the path joined to the video root, the label a class index. Blank lines are skipped.
- Labels CSV: header ``id,name``; the class index is the row order (ids are not read), the
  class text is ``name`` exactly as written. ``LABEL_CSVS`` names the shipped files.
- Videos: files under the root, or an LMDB (``preprocess/folder2lmdb.py``) keyed by base name.
  The original's ``.tar`` roots are not supported.

Evaluation (``build_recognition_eval_loader``) gives every listed video once, in list order:
``(video float32 [V, T, 3, S, S], label int64, valid int64)`` per item, V = clips x crops,
view v = crop v // C, clip v % C. A video that cannot be read is logged once and becomes a zero
clip with ``valid`` 0, so evaluation counts it and goes on.
"""
import os
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .annotations import AnnotationError, read_csv_columns
from .recognition_transforms import check_crop_count, eval_crops, normalise_views
from .sampling import xclip_view_indices
from .video_reader import VideoReader

LABELS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "labels")
# X-CLIP's DATA.DATASET names -> the class lists shipped with the project (the original's order).
LABEL_CSVS = {name: os.path.join(LABELS_DIR, f"{stem}_labels.csv") for name, stem in
              (("kinetics400", "kinetics_400"), ("kinetics600", "kinetics_600"),
               ("hmdb51", "hmdb_51"), ("ucf101", "ucf_101"))}


@dataclass(frozen=True)
class LabelledVideo:
    """One line of a list file: the video's path (root joined) and its class index."""
    path: str
    label: int


def read_class_names(path):
    """Class names of a labels CSV (header ``id,name``), in row order = class index order."""
    expected = "a CSV with header id,name and one class per row"
    names = [row["name"] for row in read_csv_columns(path, ["id", "name"], expected)]
    if not names:
        raise AnnotationError(f"{path} lists no classes; expected {expected}")
    empty = [k for k, name in enumerate(names) if not name]
    if empty:
        raise AnnotationError(f"{path}: class {empty[0]} has an empty name; expected {expected}")
    return names


def _parse_line(path, number, line, root, num_classes):
    fields = line.split()
    if len(fields) != 2:
        raise AnnotationError(f"{path} line {number}: expected 'relative/path label' (two "
                              f"whitespace-separated fields), got {line.strip()!r}")
    try:
        label = int(fields[1])
    except ValueError:
        raise AnnotationError(f"{path} line {number}: label {fields[1]!r} is not an integer") from None
    if not 0 <= label < num_classes:
        raise AnnotationError(f"{path} line {number}: label {label} is outside the labels CSV's "
                              f"range 0..{num_classes - 1}")
    return LabelledVideo(os.path.join(root, fields[0]), label)


def read_video_list(path, root, num_classes):
    """The videos of a list file, in file order.

    Args:
        path: the list file.
        root: folder the relative paths are joined to (in LMDB mode only base names are used).
        num_classes: K, from the labels CSV; every label must be in 0..K-1.
    Returns:
        list of ``LabelledVideo``.
    Raises:
        AnnotationError naming the file and line of a malformed line or a label out of range.
    """
    if not os.path.isfile(path):
        raise AnnotationError(f"list file {path} does not exist; expected lines 'relative/path label'")
    with open(path, "r", encoding="utf-8") as f:
        lines = list(enumerate(f, start=1))
    videos = [_parse_line(path, number, line, root, num_classes)
              for number, line in lines if line.strip()]
    if not videos:
        raise AnnotationError(f"list file {path} lists no videos")
    return videos


@dataclass(frozen=True)
class EvalViews:
    """X-CLIP's evaluation views of a video: C clips (``xclip_view_indices``) x K crops.

    The recognition dataset asks its views for the frame-index rule, the per-frame transform
    and how the converted frames become the model input; training augmentation can be another
    object with the same four methods.
    """
    num_frames: int
    num_clips: int
    num_crops: int
    input_size: int

    def __post_init__(self):
        check_crop_count(self.num_crops)
        if self.num_frames < 1 or self.num_clips < 1:
            raise ValueError(f"need at least one frame and one clip, got T={self.num_frames}, "
                             f"C={self.num_clips}")

    def sampler(self):
        """N -> int64 [C * T] frame indices, clip by clip."""
        return partial(xclip_view_indices, num_segments=self.num_frames, num_clips=self.num_clips)

    def frame_transform(self):
        """uint8 [H, W, 3] frame -> uint8 [K, S, S, 3] crops, applied as frames are decoded."""
        return partial(eval_crops, size=self.input_size, num_crops=self.num_crops)

    def assemble(self, frames):
        """C * T converted frames (clip-major) -> float32 [V, T, 3, S, S], view v = crop v // C,
        clip v % C."""
        c, t, k, s = self.num_clips, self.num_frames, self.num_crops, self.input_size
        crops = np.stack(frames).reshape(c, t, k, s, s, 3)
        crops = crops.transpose(2, 0, 1, 3, 4, 5)  # (K, C, T, S, S, 3)
        return normalise_views(crops.reshape(k * c, t, s, s, 3))  # (V, T, 3, S, S)

    def blank(self):
        """The zero clip standing in for a video that cannot be read, float32 [V, T, 3, S, S]."""
        s = self.input_size
        return torch.zeros(self.num_crops * self.num_clips, self.num_frames, 3, s, s)


class RecognitionDataset(Dataset):
    """Labelled videos decoded into views.

    Args:
        videos: list of ``LabelledVideo``.
        reader: a ``VideoReader`` (file or LMDB source, broken videos logged once per path).
        views: e.g. ``EvalViews``: ``sampler()``, ``frame_transform()``, ``assemble(frames)``,
            ``blank()``.

    An item is ``(video, label, valid)``: the views' tensor (``[V, T, 3, S, S]`` for
    ``EvalViews``), the class index (int64) and 1, or 0 with a zero tensor for a broken video.
    """

    def __init__(self, videos, reader, views):
        self.videos = videos
        self.reader = reader
        self.views = views

    def __len__(self):
        return len(self.videos)

    def __getitem__(self, index):
        item = self.videos[index]
        label = torch.tensor(item.label, dtype=torch.int64)
        decoded = self.reader.decode(item.path, self.views.sampler(), self.views.frame_transform())
        if decoded is None:
            return self.views.blank(), label, torch.tensor(0, dtype=torch.int64)
        frames, _ = decoded
        return self.views.assemble(frames), label, torch.tensor(1, dtype=torch.int64)


def build_recognition_eval_loader(*, list_path, root, labels_csv, lmdb_path, num_frames, num_clips,
                                  num_crops, input_size, batch_size, num_workers):
    """The evaluation loader of ``--task_type recognition --datatype video_list``.

    Args:
        list_path: ``--val_list``; root: ``--features_path``; labels_csv: ``--labels_csv``;
        lmdb_path: ``--lmdb_dataset`` or None; num_frames: T (``--max_frames``); num_clips: C;
        num_crops: 1 or 3; input_size: S; batch_size: ``--batch_size_val``; num_workers:
        ``--num_thread_reader``.
    Returns:
        (DataLoader, class_names): batches ``(video [B, V, T, 3, S, S] float32, label [B] int64,
        valid [B] int64)``, every video once in list order (the last batch may be smaller);
        the class names in class-index order (K = their number).
    """
    class_names = read_class_names(labels_csv)
    videos = read_video_list(list_path, root, len(class_names))
    reader = VideoReader(num_frames, False, lmdb_path=lmdb_path, image_size=input_size)
    views = EvalViews(num_frames, num_clips, num_crops, input_size)
    dataset = RecognitionDataset(videos, reader, views)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        pin_memory=torch.cuda.is_available(), drop_last=False)
    return loader, class_names
