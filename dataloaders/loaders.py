"""DataLoaders from datasets and the command-line arguments (SPEC §8 flags)."""
import torch
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from .transforms import CLIP_MEAN, CLIP_STD
from .video_reader import VideoReader


def make_reader(args, train):
    """The clip reader of a split: ``--max_frames`` frames, TSN sampling when ``train``, square
    frames of the model's input size ``args.image_resolution`` normalised with its statistics
    ``args.image_mean`` / ``args.image_std`` (set from the built CLIP; 224 pixels and OpenAI's
    statistics, the released models', when absent)."""
    image_size = getattr(args, "image_resolution", None) or 224
    mean, std = getattr(args, "image_mean", None) or CLIP_MEAN, getattr(args, "image_std", None) or CLIP_STD
    return VideoReader(args.max_frames, train, lmdb_path=args.lmdb_dataset, image_size=image_size, mean=mean, std=std)


def make_train_loader(dataset, args):
    """Shuffled training loader of ``--batch_size`` (per process), incomplete batch dropped.

    Returns:
        (DataLoader, len(dataset), sampler): the sampler is a ``DistributedSampler`` when
        ``torch.distributed`` is initialised (call its ``set_epoch`` every epoch), else None.
    """
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    sampler = DistributedSampler(dataset) if distributed else None
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=sampler is None,
                        sampler=sampler, num_workers=args.num_thread_reader,
                        pin_memory=torch.cuda.is_available(), drop_last=True)
    return loader, len(dataset), sampler


def make_eval_loader(dataset, args):
    """Sequential evaluation loader of ``--batch_size_val``; returns (DataLoader, len(dataset))."""
    loader = DataLoader(dataset, batch_size=args.batch_size_val, shuffle=False,
                        num_workers=args.num_thread_reader,
                        pin_memory=torch.cuda.is_available(), drop_last=False)
    return loader, len(dataset)
