"""The faiss index over the stored window embeddings (inner product of unit vectors = cosine).

Exact search (`IndexFlatIP`) up to EXACT_LIMIT vectors, an inverted file (`IndexIVFFlat`) above:
both keep the window ids of the store (`add_with_ids`) and support `remove_ids`, so an update adds
the new windows and removes the deleted ones without touching the others. (HNSW, the other usual
choice, cannot remove vectors.) The file is written with `modules.integrity.write_verified`
(temporary file, fsync, rename, SHA-256 sidecar): a crash leaves the old index or the new one, and
the store's `indexed` flags are set only after the write, so the next run redoes what was lost
(re-adding an id first removes it, so redoing is harmless).

Sizes and nprobe come from benchmarks/bench_search.py (CPU, one thread, README "Benchmarks"):
exact search of 512-d vectors takes 1.6 ms at 10^4 vectors and 21 ms at 10^5, so it passes
10 ms near 5·10^4, where the IVF takes over; at 10^6 vectors (1000 lists) 32 probes take 6-9 ms.
"""
import math
import os

import numpy as np

from modules.integrity import verify_file, write_verified

FILE = "vectors.faiss"
EXACT_LIMIT = 50_000
NPROBE = 32
RETRAIN_GROWTH = 4  # an IVF trained on n vectors is retrained (not re-encoded) past 4 n
MIN_TRAIN_PER_LIST = 39  # faiss warns below 39 training points per list
MAX_TRAIN_PER_LIST = 128


def import_faiss():
    try:
        import faiss
    except ImportError:
        raise ImportError("the search app needs faiss: pip install -r requirements-apps.txt") from None
    return faiss


def ivf_lists(n):
    """Number of IVF lists for n vectors: ~sqrt(n), at most what n trains well."""
    return int(max(1, min(4096, round(math.sqrt(n)), n // MIN_TRAIN_PER_LIST)))


def new_index(kind, dim, nlist=None):
    faiss = import_faiss()
    if kind == "flat":
        return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    return faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)


def train_ivf(index, vectors, seed=0):
    """Train the IVF's coarse quantiser on at most MAX_TRAIN_PER_LIST vectors per list."""
    sample = min(len(vectors), MAX_TRAIN_PER_LIST * index.nlist)
    rows = np.sort(np.random.default_rng(seed).choice(len(vectors), size=sample, replace=False))
    index.train(np.ascontiguousarray(vectors[rows]))


def read_index(index_dir, nprobe=NPROBE):
    """The faiss index of `index_dir` (verified against its sidecar), or None when there is none."""
    path = os.path.join(index_dir, FILE)
    if not os.path.isfile(path):
        return None
    verify_file(path)
    index = import_faiss().read_index(path)
    if hasattr(index, "nprobe"):
        index.nprobe = nprobe
    return index


def write_index(index, index_dir):
    write_verified(os.path.join(index_dir, FILE), lambda tmp: import_faiss().write_index(index, tmp))


def build(store, dim):
    """A new index of every stored embedding: exact or IVF by their number. Returns (index, kind,
    number of vectors)."""
    parts = list(store.embeddings())
    ids = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int64)
    vectors = np.concatenate([p[1] for p in parts]) if parts else np.zeros((0, dim), np.float32)
    kind = "flat" if len(ids) <= EXACT_LIMIT else "ivf"
    index = new_index(kind, dim, ivf_lists(len(ids)))
    if kind == "ivf":
        train_ivf(index, vectors)
    if len(ids):
        index.add_with_ids(vectors, ids)
    return index, kind, len(ids)


def sync(store, index_dir, dim):
    """Bring the faiss file up to the store: rebuilt (from stored embeddings, nothing re-encoded)
    when there is none, when the collection crossed EXACT_LIMIT, or when an IVF was trained on fewer
    than 1/RETRAIN_GROWTH of the vectors; else the removed windows removed and the new ones added.

    Returns:
        "rebuilt", "updated" or "unchanged".
    """
    state = store.info().get("faiss")
    count = store.count()
    index = read_index(index_dir)
    wanted = "flat" if count <= EXACT_LIMIT else "ivf"
    if (index is None or state is None or state["kind"] != wanted
            or (wanted == "ivf" and count > RETRAIN_GROWTH * state["trained_on"])):
        index, kind, trained_on = build(store, dim)
        write_index(index, index_dir)
        store.mark_all_synced()
        store.set_info({"faiss": {"kind": kind, "trained_on": trained_on}})
        return "rebuilt"
    removed = store.removed_ids()
    parts = list(store.embeddings("indexed = 0"))
    if not parts and not len(removed):
        return "unchanged"
    added = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int64)
    if len(removed) or len(added):
        index.remove_ids(np.concatenate([removed, added]))  # re-adding an id never duplicates it
    if parts:
        index.add_with_ids(np.concatenate([p[1] for p in parts]), added)
    write_index(index, index_dir)
    store.mark_synced(added, removed)
    return "updated"


def search(index, queries, k):
    """queries float32 [Q, D] -> (scores [Q, k], ids [Q, k]); id -1 where fewer than k exist."""
    k = max(1, min(k, index.ntotal))
    return index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
