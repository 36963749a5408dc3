"""Sharded indexing: a real 2-process torchrun (gloo) run, and two `--shard I/N` runs merged by a
plain run, each give the single-process index (same windows, same embeddings, same answers)."""
import json
import os
import socket
import subprocess
import sys

import numpy as np

from apps.search.indexing import index_collection
from apps.search.query import Searcher
from apps.search.store import part_files
from tests.test_search_fixtures import STRIDE, WINDOW, make_checkpoint, make_videos
from tests.test_search_index import stored_windows

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def assert_same_index(index, reference):
    ours, theirs = stored_windows(index), stored_windows(reference)
    assert sorted(ours) == sorted(theirs) and len(ours) == 14
    for key in theirs:
        np.testing.assert_allclose(ours[key], theirs[key], atol=1e-6)
    assert part_files(index) == []
    a, b = Searcher(index), Searcher(reference)
    for text in ("a red circle", "a square moves up"):
        strip = lambda results: [(r["path"], r["start"], r["end"], round(r["score"], 4)) for r in results]  # noqa: E731
        assert strip(a.search(a.text_vector(text), 8)) == strip(b.search(b.text_vector(text), 8))


def test_torchrun_and_shards_equal_one_process(tmp_path):
    checkpoint = make_checkpoint(str(tmp_path / "ckpt.pth.tar"))
    videos = make_videos(str(tmp_path / "videos"))
    single = str(tmp_path / "single")
    index_collection(checkpoint, videos, single, WINDOW, STRIDE, batch_size=4, num_workers=0, progress=False)

    ddp = str(tmp_path / "ddp")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(free_port()), "-m", "apps.search", "index", "--checkpoint", checkpoint,
               "--videos", videos, "--index", ddp, "--window", str(WINDOW), "--stride", str(STRIDE),
               "--batch_size", "4", "--num_workers", "0", "--no_progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    [summary] = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]  # rank 0 only
    assert summary["encoded_windows"] == 14 and summary["windows"] == 14 and summary["broken"] == 1
    assert_same_index(ddp, single)

    shards = str(tmp_path / "shards")
    counts = [index_collection(checkpoint, videos, shards, WINDOW, STRIDE, batch_size=4, num_workers=0,
                               shard=(i, 2), progress=False)["encoded_windows"] for i in range(2)]
    assert sum(counts) == 14 and min(counts) > 0 and len(part_files(shards)) == 2
    merged = index_collection(checkpoint, videos, shards, batch_size=4, num_workers=0, progress=False)
    assert merged["encoded_windows"] == 0 and merged["windows"] == 14
    assert_same_index(shards, single)
