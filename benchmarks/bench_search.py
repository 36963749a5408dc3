"""The search app on the CPU: indexing throughput and query latency.

1. Indexing (`apps.search.indexing.index_collection` into a new index each repetition): windows
   per second of the encoding phase (decoding in --num_workers worker processes, the model in
   this process, one SQLite transaction per batch), for `demo-small` (scripts/demo.sh's flags:
   6 frames, token clustering) and ViT-B/32 (12 frames, meanP), random weights; H.264 videos of
   20 s at 3 fps, 320x240, 10 s windows every 5 s (3 per video). Also the text encoder's time per
   query (one caption).
2. Vector search (faiss, one thread, one query at a time): exact search (IndexFlatIP) at 10^4,
   10^5 and 10^6 stored vectors of 512 dimensions, and the IVF the app uses above
   `vectors.EXACT_LIMIT` (`vectors.ivf_lists(n)` lists, trained as the app trains it) at 10^6
   with several nprobe: ms per query and recall@10 against exact search.
   Synthetic vectors, all unit length, `--distribution`:
   - collection (shaped like a video collection): 2,000 topics, n/10 videos (unit topic + Gaussian
     noise of norm ~1), 10 windows per video (video + noise of norm ~0.3); a query is a random
     video + noise of norm ~0.8 (near some videos, on none). A query's 10 nearest windows are then
     mostly one video's, which an IVF finds easily.
   - diffuse (harder): 20,000 topics, one window per video, a query is a random window + noise of
     norm ~1: the 10 nearest are spread over a topic's neighbourhood.

    python benchmarks/bench_search.py --json bench_search.json
    python benchmarks/bench_search.py --skip_indexing --sizes 1000000 --distribution diffuse --json bench_search_diffuse.json
"""
import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import params  # noqa: E402
from apps.search import indexing, vectors  # noqa: E402
from apps.search.model import SearchModel  # noqa: E402
from benchmarks.timing import write_results  # noqa: E402
from modules.checkpoint import save_checkpoint  # noqa: E402
from modules.clip import random_clip_state_dict  # noqa: E402
from modules.factory import create_model  # noqa: E402
from tests.video_factory import write_video  # noqa: E402

MODELS = {
    "demo-small": ["--pretrained_clip_name", "demo-small", "--max_frames", "6", "--max_words", "16",
                   "--cluster_inter", "1", "--cluster_algo", "kmediods++", "--cluster_num_blocks", "49", "49", "16",
                   "16", "--target_frames_blocks", "6", "6", "2", "2"],
    "ViT-B/32": ["--pretrained_clip_name", "ViT-B/32", "--max_frames", "12", "--max_words", "32"],
}


def make_checkpoint(name, folder):
    args = params.get_args(MODELS[name] + ["--output_dir", folder, "--do_train", "0", "--do_eval", "1"])
    model = create_model(args, random_clip_state_dict(name))
    path = os.path.join(folder, name.replace("/", "-") + ".pth.tar")
    save_checkpoint({"state_dict": model.state_dict(), "hparams": vars(args)}, path)
    return path


def bench_indexing(name, videos, folder, repeats, batch_size, num_workers):
    """Median windows per second of the encoding phase, and median ms per text query."""
    checkpoint = make_checkpoint(name, folder)
    timings = []
    encode = indexing.encode

    def timed_encode(*args, **kwargs):
        start = time.perf_counter()
        result = encode(*args, **kwargs)
        timings.append((result[0], time.perf_counter() - start))
        return result

    indexing.encode = timed_encode
    try:
        for r in range(repeats):
            indexing.index_collection(checkpoint, videos, os.path.join(folder, f"{name.replace('/', '-')}-{r}"),
                                      10.0, 5.0, batch_size, num_workers, progress=False)
    finally:
        indexing.encode = encode
    model = SearchModel(checkpoint)
    model.encode_text(["warm up"])
    text_ms = []
    for i in range(20):
        start = time.perf_counter()
        model.encode_text([f"a person is cooking pasta in a kitchen {i}"])
        text_ms.append(1000 * (time.perf_counter() - start))
    return {"model": name, "windows": timings[0][0], "windows_per_second": statistics.median(n / s for n, s in timings),
            "text_query_ms": statistics.median(text_ms)}


DISTRIBUTIONS = {"collection": dict(topics=2000, windows_per_video=10, query_noise=0.8),
                 "diffuse": dict(topics=20000, windows_per_video=1, query_noise=1.0)}


def synthetic_collection(n, dim, topics, windows_per_video, seed=0):
    """n unit vectors: topics -> videos -> windows (see the module docstring); float32 [n, D] and
    the videos [n / windows_per_video, D]."""
    rng = np.random.default_rng(seed)
    unit = lambda x: (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)  # noqa: E731
    topics = unit(rng.standard_normal((topics, dim)))
    num_videos = max(1, n // windows_per_video)
    videos = unit(topics[rng.integers(0, len(topics), num_videos)] + rng.standard_normal((num_videos, dim)) / dim ** 0.5)
    out = np.empty((n, dim), np.float32)
    for first in range(0, n, 100_000):
        rows = np.arange(first, min(n, first + 100_000))
        out[rows] = unit(videos[rows % num_videos] + 0.3 * rng.standard_normal((len(rows), dim)) / dim ** 0.5)
    return out, videos


def queries_for(videos, count, dim, noise, seed=1):
    rng = np.random.default_rng(seed)
    q = videos[rng.integers(0, len(videos), count)] + noise * rng.standard_normal((count, dim)) / dim ** 0.5
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def per_query_ms(index, queries, k=10):
    """Median ms of single-query searches (after one warm-up)."""
    index.search(queries[:1], k)
    times = []
    for q in queries:
        start = time.perf_counter()
        index.search(q[None], k)
        times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times)


def bench_vectors(sizes, dim, num_queries, nprobes, distribution):
    faiss = vectors.import_faiss()
    faiss.omp_set_num_threads(1)
    shape = DISTRIBUTIONS[distribution]
    rows = []
    for n in sizes:
        data, videos = synthetic_collection(n, dim, shape["topics"], shape["windows_per_video"])
        queries = queries_for(videos, num_queries, dim, shape["query_noise"])
        flat = faiss.IndexFlatIP(dim)
        flat.add(data)
        _, truth = flat.search(queries, 10)
        timed = queries[: max(20, num_queries // (1 + n // 100_000))]  # fewer single queries at 1M (slow)
        rows.append({"n": n, "distribution": distribution, "index": "exact", "ms": per_query_ms(flat, timed), "recall@10": 1.0})
        if n > vectors.EXACT_LIMIT:
            ivf = vectors.new_index("ivf", dim, vectors.ivf_lists(n))
            start = time.perf_counter()
            faiss.omp_set_num_threads(os.cpu_count())  # building is not what is measured
            vectors.train_ivf(ivf, data)
            ivf.add_with_ids(data, np.arange(n, dtype=np.int64))
            faiss.omp_set_num_threads(1)
            build_s = time.perf_counter() - start
            for nprobe in nprobes:
                ivf.nprobe = nprobe
                _, found = ivf.search(queries, 10)
                recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found.tolist(), truth.tolist())])
                rows.append({"n": n, "distribution": distribution, "index": f"IVF{ivf.nlist} nprobe {nprobe}", "ms": per_query_ms(ivf, queries),
                             "recall@10": float(recall), "build_s": build_s})
        del flat, data
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch threads for the model")
    parser.add_argument("--num_workers", type=int, default=1)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--videos", type=int, nargs=2, default=[8, 4], help="videos for demo-small, ViT-B/32")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--nprobes", type=int, nargs="+", default=[8, 16, 32, 64])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--distribution", choices=list(DISTRIBUTIONS), default="collection")
    parser.add_argument("--skip_indexing", action="store_true")
    parser.add_argument("--skip_vectors", action="store_true")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = {"indexing": [], "vectors": []}
    if not args.skip_indexing:
        with tempfile.TemporaryDirectory() as folder:
            for name, count in zip(MODELS, args.videos):
                videos = os.path.join(folder, f"videos-{count}")
                if not os.path.isdir(videos):
                    os.makedirs(videos)
                    for i in range(count):
                        write_video(os.path.join(videos, f"v{i}.mp4"), num_frames=60, width=320, height=240, fps=3,
                                    keyint=6, seed=i)
                row = bench_indexing(name, videos, folder, args.repeats, args.batch_size, args.num_workers)
                results["indexing"].append(row)
                print(f"{name:>10}: {row['windows_per_second']:.2f} windows/s ({row['windows']} windows, median of "
                      f"{args.repeats}), text query {row['text_query_ms']:.1f} ms", flush=True)
    if not args.skip_vectors:
        for row in bench_vectors(args.sizes, 512, args.queries, args.nprobes, args.distribution):
            results["vectors"].append(row)
            print(f"{row['n']:>9} {row['index']:>22}: {row['ms']:8.3f} ms/query  recall@10 {row['recall@10']:.3f}",
                  flush=True)
    write_results(results, args.json, indent=1)


if __name__ == "__main__":
    main()
