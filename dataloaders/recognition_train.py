"""The training loader of ``--task_type recognition --datatype video_list`` (XCLIP_SPEC §3.3-3.4,
§5 few-shot).

Batches ``(video float32 [B, T, 3, S, S], label int64 [B], valid int64 [B])``, shuffled, the
incomplete last batch dropped (the original's ``drop_last=True``). A video that cannot be read
is logged once and becomes a zero clip with ``valid`` 0 (``video_list.RecognitionDataset``).

Randomness. Each item draws from the process-global generators exactly as the original's
pipeline does (``recognition_augment``): numpy for the frame indices and the flip, Python's
``random`` for the crop and the jitter/grayscale decisions, torch for the jitter parameters.
In a DataLoader worker, PyTorch seeds ``random`` and torch with ``base_seed + worker_id``
(``base_seed`` drawn from the main process's torch RNG for every epoch's iterator) and, since
PyTorch 1.9, numpy's legacy global RNG too; the original (PyTorch 1.11, 16 workers) relies on
that. ``seed_worker`` makes it explicit and independent of the PyTorch version: both
``random`` and numpy are reseeded from the worker's torch seed, so workers and epochs draw
different augmentations and a run seeded in the main process repeats itself. With
``num_workers=0`` the main process's generators are used as they stand.
"""
import logging
import os
import random
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from .protocols import few_shot_subset, write_video_list
from .recognition_augment import MultiScaleCropper, augment_clip
from .sampling import xclip_train_indices
from .video_list import LabelledVideo, RecognitionDataset, read_class_names, read_video_list
from .video_reader import VideoReader

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainViews:
    """X-CLIP's training view of a video: one randomly sampled, augmented clip of T frames.

    The four methods ``RecognitionDataset`` calls (as ``video_list.EvalViews``): the frame-index
    rule, the per-frame transform run as frames are decoded, the clip assembly, the blank clip.
    """
    num_frames: int
    input_size: int
    color_jitter: float
    gray_scale: float

    def __post_init__(self):
        for flag, chance in (("--color_jitter", self.color_jitter), ("--gray_scale", self.gray_scale)):
            if not 0.0 <= chance <= 1.0:
                raise ValueError(f"{flag} is a probability in [0, 1], got {chance}")
        if self.num_frames < 1 or self.input_size < 1:
            raise ValueError(f"need T >= 1 and S >= 1, got T={self.num_frames}, S={self.input_size}")

    def sampler(self):
        """N -> int64 [T]: ``xclip_train_indices`` on numpy's global RNG."""
        return partial(xclip_train_indices, num_segments=self.num_frames)

    def frame_transform(self):
        """A new ``MultiScaleCropper`` (one crop box per video): uint8 [H, W, 3] -> [S, S, 3]."""
        return MultiScaleCropper(self.input_size)

    def assemble(self, frames):
        """T cropped frames -> float32 [T, 3, S, S] (flip, jitter, grayscale, normalisation)."""
        return augment_clip(frames, self.color_jitter, self.gray_scale)

    def blank(self):
        """The zero clip standing in for a video that cannot be read, float32 [T, 3, S, S]."""
        return torch.zeros(self.num_frames, 3, self.input_size, self.input_size)


def seed_worker(worker_id):
    """``worker_init_fn``: seed Python's ``random`` and numpy's global RNG from this worker's
    torch seed (``base_seed + worker_id``, different for every worker and epoch). numpy gets a
    SeedSequence-mixed state of that seed, so it does not share a seed with ``random``."""
    worker_seed = torch.initial_seed()
    random.seed(worker_seed)
    np.random.seed(np.random.SeedSequence([worker_seed, worker_id]).generate_state(4))


def training_videos(*, list_path, root, class_names, shots, seed, subset_path):
    """The training list's videos (root-joined), or its few-shot subset when ``shots`` > 0.

    The subset (``protocols.few_shot_subset``) is written to ``subset_path`` when given, with
    the list's own relative paths, so a run records exactly what it trained on.

    Returns:
        list of ``LabelledVideo``.
    """
    videos = read_video_list(list_path, "", len(class_names))  # root "" keeps the relative paths
    if shots > 0:
        videos = few_shot_subset(videos, class_names=class_names, shots=shots, seed=seed)
        if subset_path:
            write_video_list(subset_path, videos)
        logger.info("few-shot: %d videos per class (seed %d), %d videos%s", shots, seed, len(videos),
                    f", list written to {subset_path}" if subset_path else "")
    elif shots < 0:
        raise ValueError(f"--shots must be 0 (all videos) or a positive count, got {shots}")
    return [LabelledVideo(os.path.join(root, v.path), v.label) for v in videos]


def build_recognition_train_loader(*, list_path, root, labels_csv, lmdb_path, num_frames, input_size,
                                   batch_size, num_workers, color_jitter, gray_scale, shots=0, seed=0,
                                   subset_path=None):
    """The training loader of ``--task_type recognition --datatype video_list``.

    Args:
        list_path: ``--train_list``; root: ``--features_path``; labels_csv: ``--labels_csv``;
        lmdb_path: ``--lmdb_dataset`` or None; num_frames: T (``--max_frames``); input_size: S;
        batch_size: ``--batch_size`` per process; num_workers: ``--num_thread_reader``;
        color_jitter, gray_scale: ``--color_jitter``, ``--gray_scale`` (probabilities per video);
        shots: ``--shots`` (0 = every video); seed: ``--seed`` without the rank (the few-shot
        draw and the DistributedSampler's shuffle must agree across ranks); subset_path: where
        the few-shot list is written (e.g. ``<output_dir>/few_shot_list.txt``), or None.
    Returns:
        (DataLoader, class_names, sampler): batches ``(video [B, T, 3, S, S] float32,
        label [B] int64, valid [B] int64)``; the sampler is a ``DistributedSampler`` when
        ``torch.distributed`` is initialised (call ``set_epoch`` every epoch), else None.
    Raises:
        ValueError when no full batch can be formed (fewer videos per process than batch_size).
    """
    class_names = read_class_names(labels_csv)
    videos = training_videos(list_path=list_path, root=root, class_names=class_names, shots=shots,
                             seed=seed, subset_path=subset_path)
    reader = VideoReader(num_frames, True, lmdb_path=lmdb_path, image_size=input_size)
    dataset = RecognitionDataset(videos, reader, TrainViews(num_frames, input_size, color_jitter,
                                                            gray_scale))
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    sampler = DistributedSampler(dataset, shuffle=True, seed=seed) if distributed else None
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=sampler is None, sampler=sampler,
                        num_workers=num_workers, worker_init_fn=seed_worker,
                        pin_memory=torch.cuda.is_available(), drop_last=True)
    if len(loader) == 0:
        per_process = len(sampler) if sampler is not None else len(dataset)
        raise ValueError(f"{list_path}: {per_process} training videos per process, fewer than "
                         f"--batch_size {batch_size}; no full batch (the last one is dropped)")
    return loader, class_names, sampler
