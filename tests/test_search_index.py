"""The search app on a tiny retrieval checkpoint and real H.264 videos: windows, encoding, the
store and faiss, queries (text, video, --max_per_video, --json), incremental updates, resuming a
killed run, LMDB collections and clear errors."""
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest

from apps.search import vectors
from apps.search.__main__ import main
from apps.search.collection import window_bounds
from apps.search.indexing import index_collection
from apps.search.model import SearchModel
from apps.search.query import Searcher
from apps.search.store import MAIN_FILE, Store, part_files
from modules.checkpoint import save_checkpoint
from preprocess.folder2lmdb import main as folder2lmdb
from tests.test_search_fixtures import STRIDE, VIDEOS, WINDOW, make_checkpoint, make_videos
from tests.video_factory import write_video

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPECTED_WINDOWS = {"a.mp4": [(0.0, 4.0)], "b.mp4": [(0.0, 4.0), (2.0, 6.0), (4.0, 8.0), (5.0, 9.0)],
                    "c.mkv": [(s, s + 4.0) for s in (0.0, 2.0, 4.0, 6.0, 8.0, 10.0, 11.0)],
                    "sub/d.mp4": [(0.0, 4.0), (2.0, 6.0)]}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A checkpoint, a folder of videos (one broken) and its index."""
    root = tmp_path_factory.mktemp("search")
    checkpoint = make_checkpoint(str(root / "ckpt.pth.tar"))
    videos = make_videos(str(root / "videos"))
    index = str(root / "index")
    summary = index_collection(checkpoint, videos, index, WINDOW, STRIDE, batch_size=4, num_workers=1,
                               progress=False)
    return root, checkpoint, videos, index, summary


def stored_windows(index):
    """{(path, start, end): embedding} of an index's store."""
    store = Store(os.path.join(index, MAIN_FILE), readonly=True)
    rows = store.db.execute("SELECT v.path, w.start, w.end, w.embedding FROM windows w JOIN videos v "
                            "ON v.id = w.video_id").fetchall()
    store.close()
    return {(p, s, e): np.frombuffer(b, dtype=np.float32) for p, s, e, b in rows}


def query_json(capsys, argv):
    capsys.readouterr()
    main(argv + ["--json"])
    return json.loads(capsys.readouterr().out)


def test_window_bounds():
    assert window_bounds(3.0, 4.0, 2.0) == [(0.0, 3.0)]
    assert window_bounds(9.0, 4.0, 2.0) == [(0.0, 4.0), (2.0, 6.0), (4.0, 8.0), (5.0, 9.0)]
    assert window_bounds(8.0, 4.0, 4.0) == [(0.0, 4.0), (4.0, 8.0)]


def test_index_windows_embeddings_and_broken_video(built, caplog):
    root, checkpoint, videos, index, summary = built
    assert summary["videos"] == 5 and summary["encoded_windows"] == 14 and summary["windows"] == 14
    assert [name for name, _ in summary["broken"]] == ["broken.mp4"]
    again = index_collection(checkpoint, videos, index, batch_size=4, num_workers=0, progress=False)
    assert again["encoded_windows"] == 0 and len(again["broken"]) == 1  # still reported, never stored
    assert f"skipped broken video {os.path.join(videos, 'broken.mp4')}: InvalidDataError" in caplog.text
    stored = stored_windows(index)
    assert sorted(stored) == sorted((name, s, e) for name, bounds in EXPECTED_WINDOWS.items() for s, e in bounds)
    assert part_files(index) == []
    # A stored embedding is the model's embedding of that window, read by the evaluation reader.
    model = SearchModel(checkpoint)
    video, mask = model.reader()(os.path.join(videos, "c.mkv"), (6.0, 10.0))
    expected = model.encode_clips(video, mask[None])[0]
    np.testing.assert_allclose(stored[("c.mkv", 6.0, 10.0)], expected, atol=1e-5)
    assert abs(np.linalg.norm(expected) - 1) < 1e-5


def test_query_text_json_is_exact_search(built, capsys):
    root, checkpoint, videos, index, _ = built
    results = query_json(capsys, ["query", "--index", index, "--text", "a red square moves left", "--top_k", "5"])
    assert len(results) == 5 and all(set(r) == {"path", "start", "end", "score"} for r in results)
    # Brute force over the stored embeddings gives the same windows and scores, best first.
    stored = stored_windows(index)
    text = SearchModel(checkpoint).encode_text(["a red square moves left"])[0]
    ranked = sorted(((float(e @ text), key) for key, e in stored.items()), reverse=True)[:5]
    assert [(os.path.join(videos, p), s, e) for _, (p, s, e) in ranked] == \
        [(r["path"], r["start"], r["end"]) for r in results]
    np.testing.assert_allclose([r["score"] for r in results], [score for score, _ in ranked], atol=1e-5)


def test_query_by_video_and_max_per_video(built, capsys):
    root, checkpoint, videos, index, _ = built
    example = os.path.join(videos, "c.mkv")
    results = query_json(capsys, ["query", "--index", index, "--video", example, "--top_k", "14"])
    assert results[0]["path"] == example and results[0]["score"] > 0.9
    searcher = Searcher(index)
    vector = searcher.video_vector(example)
    limited = searcher.search(vector, top_k=4, max_per_video=1)
    assert len(limited) == 4 and len({r["path"] for r in limited}) == 4
    twice = searcher.search(vector, top_k=6, max_per_video=2)
    counts = [sum(r["path"] == p for r in twice) for p in {r["path"] for r in twice}]
    assert len(twice) == 6 and max(counts) == 2
    # Asking for more distinct videos than exist returns them all, once each.
    assert len(searcher.search(vector, top_k=10, max_per_video=1)) == 4
    capsys.readouterr()
    main(["query", "--index", index, "--text", "a dog", "--top_k", "3"])
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["#", "score", "window", "path"] and len(table) == 4


def test_incremental_update_encodes_only_new_and_changed(built, tmp_path):
    root, checkpoint, videos, index, _ = built
    folder, copy = str(tmp_path / "videos"), str(tmp_path / "index")
    shutil.copytree(videos, folder)
    first = index_collection(checkpoint, folder, copy, WINDOW, STRIDE, batch_size=4, num_workers=0, progress=False)
    before = stored_windows(copy)
    ids_before = dict(Store(os.path.join(copy, MAIN_FILE), readonly=True).db.execute(
        "SELECT v.path || ':' || w.start, w.id FROM windows w JOIN videos v ON v.id = w.video_id").fetchall())
    again = index_collection(checkpoint, folder, copy, batch_size=4, num_workers=0, progress=False)
    assert first["encoded_windows"] == 14 and again["encoded_windows"] == 0 and again["faiss"] == "unchanged"
    os.remove(os.path.join(folder, "a.mp4"))                                      # deleted: 1 window
    time.sleep(0.01)
    write_video(os.path.join(folder, "b.mp4"), num_frames=15, width=160, height=120, fps=3, seed=7)  # 5 s: 2
    write_video(os.path.join(folder, "e.mp4"), num_frames=9, width=160, height=120, fps=3, seed=8)  # new, 3 s: 1
    update = index_collection(checkpoint, folder, copy, batch_size=4, num_workers=0, progress=False)
    assert update["encoded_windows"] == 3 and update["removed_videos"] == 1 and update["faiss"] == "updated"
    after = stored_windows(copy)
    assert {k[0] for k in after} == {"b.mp4", "c.mkv", "sub/d.mp4", "e.mp4"} and len(after) == 14 - 1 - 4 + 2 + 1
    for key in [k for k in before if k[0] in ("c.mkv", "sub/d.mp4")]:  # unchanged: same vectors, same ids
        assert np.array_equal(after[key], before[key])
    store = Store(os.path.join(copy, MAIN_FILE), readonly=True)
    ids_after = dict(store.db.execute("SELECT v.path || ':' || w.start, w.id FROM windows w JOIN videos v "
                                      "ON v.id = w.video_id").fetchall())
    assert all(ids_after[k] == ids_before[k] for k in ids_after if k.startswith(("c.mkv", "sub/d.mp4")))
    faiss_index = vectors.read_index(copy)
    assert faiss_index.ntotal == store.count() == len(after)
    assert store.removed_ids().size == 0 and store.db.execute("SELECT count(*) FROM windows WHERE indexed = 0").fetchone()[0] == 0
    # Every faiss id is a stored window: the deleted and replaced ones were removed.
    _, ids = faiss_index.search(np.ones((1, faiss_index.d), np.float32), faiss_index.ntotal)
    assert set(ids[0].tolist()) == set(ids_after.values())


def test_killed_run_loses_one_batch_and_resumes(built, tmp_path, monkeypatch):
    root, checkpoint, videos, index, _ = built
    target = str(tmp_path / "index")
    calls = []
    real = SearchModel.encode_clips

    def dies_on_third_batch(self, video, mask):
        calls.append(len(video))
        if len(calls) == 3:
            raise KeyboardInterrupt  # as a Ctrl-C or a kill in the middle of the third batch
        return real(self, video, mask)

    monkeypatch.setattr(SearchModel, "encode_clips", dies_on_third_batch)
    with pytest.raises(KeyboardInterrupt):
        index_collection(checkpoint, videos, target, WINDOW, STRIDE, batch_size=4, num_workers=0, progress=False)
    [part] = part_files(target)
    assert Store(part, readonly=True).count() == 8  # the two committed batches
    assert not os.path.exists(os.path.join(target, vectors.FILE))
    monkeypatch.setattr(SearchModel, "encode_clips", real)
    resumed = index_collection(checkpoint, videos, target, batch_size=4, num_workers=0, progress=False)
    assert resumed["encoded_windows"] == 14 - 8 and resumed["windows"] == 14
    complete, reference = stored_windows(target), stored_windows(index)
    assert sorted(complete) == sorted(reference)
    for key in reference:
        np.testing.assert_allclose(complete[key], reference[key], atol=1e-6)


def test_index_process_killed_with_sigkill_resumes(tmp_path):
    """A real `kill -9` of an indexing process once it committed a few batches: the committed
    windows are kept (SQLite transactions) and the next run encodes only the others."""
    checkpoint = make_checkpoint(str(tmp_path / "ckpt.pth.tar"))
    videos = make_videos(str(tmp_path / "videos"), {"long.mp4": (180, 5)}, broken=False)  # 60 s: 29 windows
    index = str(tmp_path / "index")
    command = [sys.executable, "-m", "apps.search", "index", "--checkpoint", checkpoint, "--videos", videos,
               "--index", index, "--window", "4", "--stride", "2", "--batch_size", "1", "--num_workers", "0"]
    process = subprocess.Popen(command, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    committed, deadline = 0, time.time() + 120
    while committed < 3 and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
        parts = part_files(index)
        try:
            committed = Store(parts[0], readonly=True).count() if parts else 0
        except sqlite3.OperationalError:  # the writer holds the lock at this instant
            pass
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    kept = Store(part_files(index)[0], readonly=True).count()
    assert 3 <= kept < 29
    resumed = index_collection(checkpoint, videos, index, batch_size=8, num_workers=0, progress=False)
    assert resumed["encoded_windows"] == 29 - kept and resumed["windows"] == 29
    assert sorted(s for _, s, _ in stored_windows(index)) == [s for s, _ in window_bounds(60.0, 4.0, 2.0)]


def test_lmdb_collection_matches_folder(built, tmp_path, capsys):
    root, checkpoint, videos, index, _ = built
    flat = tmp_path / "flat"
    flat.mkdir()
    for name in VIDEOS:
        shutil.copy(os.path.join(videos, name), flat / os.path.basename(name))
    folder2lmdb(["--video_folder", str(flat), "--lmdb_path", str(tmp_path / "videos.lmdb"), "--map_size_gb", "0.01"])
    target = str(tmp_path / "index")
    summary = index_collection(checkpoint, str(tmp_path / "videos.lmdb"), target, WINDOW, STRIDE, batch_size=8,
                               num_workers=1, progress=False)
    assert summary["encoded_windows"] == 14 and summary["broken"] == []
    from_lmdb, from_folder = stored_windows(target), stored_windows(index)
    for (name, start, end), embedding in from_folder.items():
        np.testing.assert_allclose(from_lmdb[(os.path.basename(name), start, end)], embedding, atol=1e-6)
    results = query_json(capsys, ["query", "--index", target, "--text", "a circle", "--top_k", "2"])
    assert results[0]["path"] in {"a.mp4", "b.mp4", "c.mkv", "d.mp4"}


def test_ivf_index_above_the_exact_limit(tmp_path, monkeypatch):
    """Past EXACT_LIMIT the store's vectors go to an IVF (rebuilt, nothing re-encoded), which then
    updates in place; probing every list it returns exactly what exact search returns."""
    monkeypatch.setattr(vectors, "EXACT_LIMIT", 500)
    store = Store(str(tmp_path / MAIN_FILE))
    store.set_info({"dim": 16})
    rng = np.random.default_rng(0)
    points = rng.standard_normal((900, 16)).astype(np.float32)
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    from apps.search.collection import Stamp
    store.add_batch({f"v{i}": (Stamp(i), 1.0, 1) for i in range(400)},
                    [(f"v{i}", 0.0, 1.0, points[i]) for i in range(400)])
    assert vectors.sync(store, str(tmp_path), 16) == "rebuilt"
    assert type(vectors.read_index(str(tmp_path))).__name__ == "IndexIDMap2"
    store.add_batch({f"v{i}": (Stamp(i), 1.0, 1) for i in range(400, 900)},
                    [(f"v{i}", 0.0, 1.0, points[i]) for i in range(400, 900)])
    assert vectors.sync(store, str(tmp_path), 16) == "rebuilt"
    ivf = vectors.read_index(str(tmp_path))
    assert type(ivf).__name__ == "IndexIVFFlat" and ivf.ntotal == 900 and ivf.nlist == vectors.ivf_lists(900)
    store.remove_stale({f"v{i}": Stamp(i) for i in range(100, 900)})  # v0..v99 deleted
    assert vectors.sync(store, str(tmp_path), 16) == "updated"
    ivf = vectors.read_index(str(tmp_path), nprobe=vectors.ivf_lists(900))
    queries = points[:20]
    scores, ids = vectors.search(ivf, queries, 5)
    exact = points[100:] @ queries.T  # (800, 20)
    expected = np.argsort(-exact, axis=0)[:5].T
    stored_ids = np.array(sorted(store.lookup(range(1, 1000))))  # window ids of v100..v899, in order
    assert np.array_equal(ids, stored_ids[expected])
    np.testing.assert_allclose(scores, np.take_along_axis(exact.T, expected, axis=1), atol=1e-5)


@pytest.mark.parametrize("argv, message", [
    (["index", "--checkpoint", "missing.pth.tar", "--videos", "{videos}", "--index", "{tmp}/i"],
     "--checkpoint missing.pth.tar does not exist"),
    (["index", "--checkpoint", "{checkpoint}", "--videos", "{tmp}/nowhere", "--index", "{tmp}/i"],
     "--videos {tmp}/nowhere does not exist"),
    (["index", "--checkpoint", "{other}", "--videos", "{videos}", "--index", "{index}"], "not comparable"),
    (["index", "--checkpoint", "{checkpoint}", "--videos", "{videos}", "--index", "{index}", "--window", "8"],
     "--window 8.0: {index} was built with --window 4.0"),
    (["index", "--checkpoint", "{recognition}", "--videos", "{videos}", "--index", "{tmp}/i"],
     "{recognition} is a recognition model; search needs a text-video retrieval model"),
    (["query", "--index", "{tmp}/none", "--text", "x"], "--index {tmp}/none holds no index"),
    (["query", "--index", "{index}", "--text", "x", "--top_k", "0"], "--top_k must be >= 1"),
    (["query", "--index", "{index}", "--video", "{videos}/broken.mp4"], "--video {videos}/broken.mp4 cannot be read"),
])
def test_bad_input_names_the_file_or_flag(built, tmp_path, caplog, argv, message):
    root, checkpoint, videos, index, _ = built
    other = str(root / "other.pth.tar")
    if not os.path.exists(other):
        make_checkpoint(other, seed=2)
    recognition = str(root / "xclip.pth.tar")
    if not os.path.exists(recognition):
        save_checkpoint({"state_dict": {}, "hparams": {"task_type": "recognition"}}, recognition)
    fields = dict(videos=videos, tmp=str(tmp_path), checkpoint=checkpoint, other=other, index=index,
                  recognition=recognition)
    with pytest.raises(SystemExit) as stop:
        main([a.format(**fields) for a in argv])
    assert stop.value.code == 1
    assert message.format(**fields) in caplog.text
