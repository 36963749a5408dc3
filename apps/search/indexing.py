"""`index`: bring an index folder up to a collection of videos.

One run, for each process (torchrun: each rank a shard of the videos to encode; `--shard I/N`:
this process only, without torchrun):
1. rank 0 merges part files left by a killed run (their batches are kept) and checks that the
   index was built with this checkpoint, window and stride;
2. plan: every video of the collection whose version is stored with all its windows is skipped;
   for the others the missing windows are encoded (all of them for a new or changed video);
3. encode: DataLoader workers probe durations and decode windows, the model encodes batches, each
   batch is one transaction in this process's part file (a kill loses at most that batch);
4. rank 0 merges the parts, deletes videos that are gone or changed, and updates the faiss index.
A `--shard` run stops after step 3; a later plain `index` run (or `merge`) does steps 1 and 4.
"""
import logging
import os
from datetime import timedelta

import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from dataloaders.video_reader import BROKEN_VIDEO_ERRORS

from . import vectors
from .collection import open_videos, probe_duration, window_bounds
from .model import SearchModel
from .store import MAIN_FILE, Store, part_files, part_path

logger = logging.getLogger("apps.search")
DEFAULT_WINDOW, DEFAULT_STRIDE = 10.0, 5.0


def resolve_settings(stored, model, videos, window, stride, where):
    """The index's settings: those `stored` (an index's info), checked against this run's, or this
    run's for a new index. Raises ValueError naming the flag that differs and `where` it is stored."""
    settings = {"model": model.name, "checkpoint_sha256": model.sha256, "checkpoint": model.checkpoint,
                "dim": model.dim, "window": DEFAULT_WINDOW if window is None else float(window),
                "stride": DEFAULT_STRIDE if stride is None else float(stride), "videos": videos.root,
                "source": videos.kind}
    if not stored:
        if settings["window"] <= 0 or not 0 < settings["stride"] <= settings["window"]:
            raise ValueError(f"--window {settings['window']} --stride {settings['stride']}: need "
                             "0 < stride <= window")
        return settings
    if stored["checkpoint_sha256"] != model.sha256:
        raise ValueError(f"{where} was built with the checkpoint {stored['checkpoint']} (SHA-256 "
                         f"{stored['checkpoint_sha256'][:12]}...), not --checkpoint {model.checkpoint} "
                         f"({model.sha256[:12]}...): their embeddings are not comparable; use a new --index folder")
    for flag, given in (("window", window), ("stride", stride)):
        if given is not None and float(given) != stored[flag]:
            raise ValueError(f"--{flag} {given}: {where} was built with --{flag} {stored[flag]}; pass that "
                             "or use a new --index folder")
    if stored["videos"] != videos.root:
        raise ValueError(f"--videos {videos.root}: {where} indexes {stored['videos']}; use a new --index folder")
    return {**stored, "checkpoint": model.checkpoint}


def merge_parts(store, index_dir):
    """Move every part file into the main store (whose settings it must share) and delete it."""
    settings = store.info()
    for part in part_files(index_dir):
        source = Store(part, readonly=True)
        stored = source.info()
        source.close()
        for key in ("checkpoint_sha256", "window", "stride", "videos"):
            if key in stored and stored[key] != settings.get(key):
                raise ValueError(f"{part} was encoded with {key} = {stored[key]}, but {index_dir} has "
                                 f"{settings.get(key)}: delete the part file or index into a new --index folder")
        store.merge(part)
        os.remove(part)


def first_part_info(index_dir):
    """(settings, path) of the first part file, or ({}, None) when there is none."""
    for part in part_files(index_dir):
        source = Store(part, readonly=True)
        info = source.info()
        source.close()
        return info, part
    return {}, None


def plan(listing, stored, stored_starts):
    """Videos that need encoding, in name order: [(name, stamp, starts already stored)].

    Args:
        listing: {name: Stamp} of the collection.
        stored: {name: StoredVideo} of the main store and this process's part.
        stored_starts: {name: set of stored window starts}.
    """
    work = []
    for name, stamp in listing.items():
        video = stored.get(name)
        if video is not None and video.stamp == stamp:
            done = stored_starts.get(name, set())
            if len(done) >= video.num_windows:
                continue
            work.append((name, stamp, done))
        else:
            work.append((name, stamp, set()))
    return work


class ProbeDataset(Dataset):
    """Item i: (i, duration in seconds or None, the error of a broken video or None)."""

    def __init__(self, names, videos):
        self.names, self.videos = names, videos

    def __len__(self):
        return len(self.names)

    def __getitem__(self, i):
        try:
            return i, probe_duration(self.videos.source(self.names[i])), None
        except (*BROKEN_VIDEO_ERRORS, ValueError) as error:
            return i, None, f"{type(error).__name__}: {error}"


class WindowDataset(Dataset):
    """Item i: (i, video [1, T, 3, S, S], video_mask [1, T]) of window i = (name, start, end)."""

    def __init__(self, windows, videos, reader):
        self.windows, self.videos, self.reader = windows, videos, reader

    def __len__(self):
        return len(self.windows)

    def __getitem__(self, i):
        name, start, end = self.windows[i]
        video, mask = self.reader(self.videos.path(name), (start, end))
        return i, video, mask


def cut_windows(work, videos, settings, num_workers):
    """Probe the durations of the videos to encode and cut them into windows not yet stored.

    Returns:
        (windows [(name, start, end)], {name: (stamp, duration, num_windows)}, broken [(name, why)]).
    """
    names = [name for name, _, _ in work]
    loader = DataLoader(ProbeDataset(names, videos), batch_size=None, num_workers=num_workers)
    windows, meta, broken = [], {}, []
    for i, duration, error in loader:
        name, stamp, done = work[i]
        if duration is None:
            broken.append((name, error))
            continue
        bounds = window_bounds(duration, settings["window"], settings["stride"])
        meta[name] = (stamp, duration, len(bounds))
        windows.extend((name, start, end) for start, end in bounds if start not in done)
    return windows, meta, broken


def encode(model, videos, windows, meta, part, batch_size, num_workers, progress=True):
    """Encode `windows` in batches, each committed to the `part` store. Returns (number of windows
    stored, names of the videos with a window that could not be decoded: not stored)."""
    dataset = WindowDataset(windows, videos, model.reader(videos.lmdb_path))
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers)
    broken, stored = set(), 0
    with tqdm(total=len(windows), unit="window", desc="encoding", disable=not progress) as bar:
        for indices, video, mask in loader:
            readable = mask.reshape(len(indices), -1).sum(-1) > 0  # an all-zero mask is a broken video
            rows = [windows[i] for i in indices[readable].tolist()]
            broken.update(windows[i][0] for i in indices[~readable].tolist())
            if rows:
                embeddings = model.encode_clips(video[readable], mask[readable])  # (b, D)
                part.add_batch({name: meta[name] for name, _, _ in rows},
                               [(name, start, end, e) for (name, start, end), e in zip(rows, embeddings)])
            stored += len(rows)
            bar.update(len(indices))
    return stored, broken


def process_group():
    """(rank, world size, whether this call started torch.distributed) under torchrun."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        # Ranks wait at the barriers while others encode: a long timeout.
        dist.init_process_group("gloo", init_method="env://", timeout=timedelta(hours=24))
        return dist.get_rank(), dist.get_world_size(), True
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), False
    return 0, 1, False


def barrier(distributed):
    if distributed:
        dist.barrier()


def index_collection(checkpoint, videos, index_dir, window=None, stride=None, batch_size=8, num_workers=2,
                     shard=None, progress=True):
    """Index the videos of a folder or LMDB into `index_dir` (see the module docstring).

    Args:
        shard: (I, N) to encode only shard I of N without torchrun, leaving a part file to merge.
    Returns:
        summary dict (this process's counts; rank 0's totals under torchrun): videos, encoded_windows,
        removed_videos, broken [(name, why)], windows (stored in all), faiss ("rebuilt", "updated",
        "unchanged"); on a --shard run only the first three; None on torchrun ranks other than 0.
    """
    rank, world, started = process_group() if shard is None else (shard[0], shard[1], False)
    distributed = shard is None and world > 1
    model = SearchModel(checkpoint)
    collection = open_videos(videos)
    main_path = os.path.join(index_dir, MAIN_FILE)
    if rank == 0 and shard is None:
        store = Store(main_path)
        # A new index whose videos were encoded by --shard runs takes their settings.
        stored, where = (store.info(), index_dir) if store.info() else first_part_info(index_dir)
        store.set_info(resolve_settings(stored, model, collection, window, stride, where))
        merge_parts(store, index_dir)
        store.close()
    barrier(distributed)
    main = Store(main_path, readonly=True) if os.path.isfile(main_path) else None
    settings = resolve_settings(main.info() if main else {}, model, collection, window, stride, index_dir)
    part = Store(part_path(index_dir, rank, world))
    part.set_info(settings)
    listing = collection.list()
    work = plan(listing, *stored_state([s for s in (main, part) if s is not None]))[rank::world]
    windows, meta, broken = cut_windows(work, collection, settings, num_workers)
    encoded, undecodable = encode(model, collection, windows, meta, part, batch_size, num_workers, progress)
    broken += [(name, "no window could be decoded") for name in sorted(undecodable)]
    for name, why in broken:
        logger.warning("skipped broken video %s: %s", collection.path(name), why)
    part.close()
    if main:
        main.close()
    summary = {"videos": len(listing), "encoded_windows": encoded, "broken": broken}
    if distributed:
        gathered = [None] * world
        dist.all_gather_object(gathered, summary)
        summary = {"videos": len(listing), "encoded_windows": sum(s["encoded_windows"] for s in gathered),
                   "broken": [b for s in gathered for b in s["broken"]]}
    barrier(distributed)
    if shard is None and rank == 0:
        summary.update(finish(index_dir, listing))
    if started:
        dist.destroy_process_group()
    return summary if shard is not None or rank == 0 else None


def stored_state(stores):
    """({name: StoredVideo}, {name: set of starts}) over the stores (the main one, then a part; a
    part's version of a video wins)."""
    videos, starts = {}, {}
    for store in stores:
        by_id = store.window_starts()
        for name, video in store.videos().items():
            if name in videos and videos[name].stamp == video.stamp:
                starts[name] = starts[name] | by_id.get(video.id, set())
            else:
                starts[name] = set(by_id.get(video.id, set()))
            videos[name] = video
    return videos, starts


def finish(index_dir, listing):
    """Merge the parts, delete the videos gone from `listing` or changed, sync faiss."""
    store = Store(os.path.join(index_dir, MAIN_FILE))
    merge_parts(store, index_dir)
    removed = store.remove_stale(listing)
    status = vectors.sync(store, index_dir, store.info()["dim"])
    result = {"removed_videos": removed, "windows": store.count(), "faiss": status}
    store.close()
    return result

