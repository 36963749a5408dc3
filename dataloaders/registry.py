"""``--datatype`` -> DataLoader builders.

Retrieval (``DATALOADERS``): every builder takes ``(args, tokenizer)``. ``train`` returns ``(DataLoader, length, sampler)``
(sampler: a ``DistributedSampler`` under DDP, else None); ``val`` and ``test`` return
``(DataLoader, length)``. ``test`` is the split evaluated after every epoch; ``val`` is None
where the dataset has no separate validation split (MSR-VTT, ActivityNet).

Recognition (``RECOGNITION_EVAL_LOADERS``, ``RECOGNITION_TRAIN_LOADERS``): the evaluation and
training loader builders of each datatype, called with explicit keyword arguments
(``video_list.build_recognition_eval_loader``, ``recognition_train.build_recognition_train_loader``).
"""
from . import activity, demo, didemo, lsmdc, msrvtt, msvd, recognition_train, video_list
from .loaders import make_eval_loader, make_train_loader

DATALOADERS = {}


def loader_builder(build_dataset, split, train):
    """(args, tokenizer) -> the loader of one split of a dataset."""
    def build(args, tokenizer):
        dataset = build_dataset(args, tokenizer, split)
        return make_train_loader(dataset, args) if train else make_eval_loader(dataset, args)
    return build


def register(name, build_dataset, test_split="test", val_split=None):
    """Add a dataset under ``--datatype name``; ``build_dataset(args, tokenizer, split)`` makes the
    Dataset of a split, ``test_split`` names the split evaluated after every epoch."""
    DATALOADERS[name] = {"train": loader_builder(build_dataset, "train", True),
                         "val": loader_builder(build_dataset, val_split, False) if val_split else None,
                         "test": loader_builder(build_dataset, test_split, False)}


register("msrvtt", msrvtt.build_dataset)
register("msvd", msvd.build_dataset, val_split="val")
register("lsmdc", lsmdc.build_dataset, val_split="val")
register("activity", activity.build_dataset, test_split="val")  # ActivityNet is evaluated on val_1
register("didemo", didemo.build_dataset, val_split="val")
register("demo", demo.build_dataset)

RECOGNITION_EVAL_LOADERS = {"video_list": video_list.build_recognition_eval_loader}
RECOGNITION_TRAIN_LOADERS = {"video_list": recognition_train.build_recognition_train_loader}
