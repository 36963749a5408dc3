"""``--datatype`` -> DataLoader builders.

Every builder takes ``(args, tokenizer)``. ``train`` returns ``(DataLoader, length, sampler)``
(sampler: a ``DistributedSampler`` under DDP, else None); ``val`` and ``test`` return
``(DataLoader, length)``. ``test`` is the split evaluated after every epoch; ``val`` is None
where the dataset has no separate validation split (MSR-VTT, ActivityNet).
"""
from . import activity, demo, didemo, lsmdc, msrvtt, msvd

DATALOADERS = {}


def register(name, train, val, test):
    """Add a dataset (e.g. the demo) under ``--datatype name``."""
    DATALOADERS[name] = {"train": train, "val": val, "test": test}


register("msrvtt", msrvtt.build_train, None, msrvtt.build_test)
register("msvd", msvd.build_train, msvd.build_val, msvd.build_test)
register("lsmdc", lsmdc.build_train, lsmdc.build_val, lsmdc.build_test)
register("activity", activity.build_train, None, activity.build_test)
register("didemo", didemo.build_train, didemo.build_val, didemo.build_test)
register("demo", demo.build_train, None, demo.build_test)
