"""The index's source of truth: an SQLite file of videos, their windows and the windows' embeddings.

SQLite makes every write a transaction: a batch of windows is committed whole or not at all, so a
killed indexing run loses at most the batch in flight. An indexing process writes its batches to a
part file of its own (`parts/part-RRR-of-WWW.sqlite`); the merge step moves parts into the main
file (`index.sqlite`), each part in one transaction and idempotently (a window is unique by video
and start), so a crash during a merge is repaired by merging again.

Tables:
  info(key, value)      JSON values: model, checkpoint hash, window, stride, source folder or LMDB
  videos(id, path, size, mtime, digest, duration, num_windows)   one row per video version
  windows(id, video_id, start, end, embedding, indexed)  embedding: D float32; indexed: in faiss
  removed(id)           ids of deleted windows still to be removed from the faiss index
Ids are AUTOINCREMENT, never reused, so a faiss id names one window forever.
"""
import json
import os
import sqlite3
from dataclasses import dataclass

import numpy as np

from .collection import Stamp

SCHEMA = """
CREATE TABLE IF NOT EXISTS info (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS videos (
    id INTEGER PRIMARY KEY AUTOINCREMENT, path TEXT UNIQUE NOT NULL, size INTEGER NOT NULL, mtime REAL,
    digest TEXT, duration REAL NOT NULL, num_windows INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS windows (
    id INTEGER PRIMARY KEY AUTOINCREMENT, video_id INTEGER NOT NULL, start REAL NOT NULL, end REAL NOT NULL,
    embedding BLOB NOT NULL, indexed INTEGER NOT NULL DEFAULT 0, UNIQUE (video_id, start));
CREATE INDEX IF NOT EXISTS windows_pending ON windows (indexed);
CREATE TABLE IF NOT EXISTS removed (id INTEGER PRIMARY KEY);
"""
MAIN_FILE = "index.sqlite"
PARTS_FOLDER = "parts"


@dataclass(frozen=True)
class StoredVideo:
    id: int
    stamp: Stamp
    duration: float
    num_windows: int


def part_path(index_dir, rank, world_size):
    return os.path.join(index_dir, PARTS_FOLDER, f"part-{rank:03d}-of-{world_size:03d}.sqlite")


def part_files(index_dir):
    """The part files left in `index_dir`, sorted."""
    folder = os.path.join(index_dir, PARTS_FOLDER)
    if not os.path.isdir(folder):
        return []
    return sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(".sqlite"))


class Store:
    """One SQLite file of the schema above (the main file or a part)."""

    def __init__(self, path, readonly=False):
        self.path = path
        if readonly:
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{path} does not exist: not an index (build one with `index`)")
            self.db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
        else:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            self.db = sqlite3.connect(path, check_same_thread=False)
            self.db.executescript(SCHEMA)
        try:
            self.db.execute("SELECT count(*) FROM info").fetchone()
        except sqlite3.DatabaseError as error:
            raise ValueError(f"{path} is not an index file ({error})") from None

    def close(self):
        self.db.close()

    # -- settings -------------------------------------------------------------------------------
    def info(self):
        return {key: json.loads(value) for key, value in self.db.execute("SELECT key, value FROM info")}

    def set_info(self, values):
        with self.db:
            self.db.executemany("INSERT OR REPLACE INTO info VALUES (?, ?)",
                                [(k, json.dumps(v)) for k, v in values.items()])

    # -- videos and windows ---------------------------------------------------------------------
    def videos(self):
        """{path: StoredVideo}."""
        rows = self.db.execute("SELECT id, path, size, mtime, digest, duration, num_windows FROM videos")
        return {path: StoredVideo(vid, Stamp(size, mtime, digest), duration, n)
                for vid, path, size, mtime, digest, duration, n in rows}

    def window_starts(self):
        """{video id: set of window starts stored}."""
        starts = {}
        for vid, start in self.db.execute("SELECT video_id, start FROM windows"):
            starts.setdefault(vid, set()).add(start)
        return starts

    def count(self):
        return self.db.execute("SELECT count(*) FROM windows").fetchone()[0]

    def add_batch(self, videos, windows):
        """Commit one encoded batch in one transaction.

        Args:
            videos: {path: (Stamp, duration, num_windows)} of the videos the windows belong to.
            windows: list of (path, start, end, embedding float32 [D]).
        """
        with self.db:
            ids = {path: self._put_video(path, *video) for path, video in videos.items()}
            self.db.executemany("INSERT OR IGNORE INTO windows (video_id, start, end, embedding) VALUES (?, ?, ?, ?)",
                                [(ids[path], start, end, np.asarray(e, np.float32).tobytes())
                                 for path, start, end, e in windows])

    def _put_video(self, path, stamp, duration, num_windows):
        """The id of `path` at version `stamp`: kept when stored at that version, else the old
        version is removed and the new one inserted (inside the caller's transaction)."""
        row = self.db.execute("SELECT id, size, mtime, digest FROM videos WHERE path = ?", (path,)).fetchone()
        if row is not None and Stamp(*row[1:]) == stamp:
            return row[0]
        if row is not None:
            self._delete_video(row[0])
        cursor = self.db.execute("INSERT INTO videos (path, size, mtime, digest, duration, num_windows) "
                                 "VALUES (?, ?, ?, ?, ?, ?)",
                                 (path, stamp.size, stamp.mtime, stamp.digest, duration, num_windows))
        return cursor.lastrowid

    def _delete_video(self, video_id):
        self.db.execute("INSERT OR IGNORE INTO removed SELECT id FROM windows WHERE video_id = ?",
                        (video_id,))
        self.db.execute("DELETE FROM windows WHERE video_id = ?", (video_id,))
        self.db.execute("DELETE FROM videos WHERE id = ?", (video_id,))

    def merge(self, part):
        """Move a part file's videos and windows in, in one transaction (idempotent)."""
        source = sqlite3.connect(f"file:{part}?mode=ro", uri=True)
        try:
            with self.db:
                for pid, path, size, mtime, digest, duration, n in source.execute(
                        "SELECT id, path, size, mtime, digest, duration, num_windows FROM videos"):
                    vid = self._put_video(path, Stamp(size, mtime, digest), duration, n)
                    rows = source.execute("SELECT start, end, embedding FROM windows WHERE video_id = ?", (pid,))
                    self.db.executemany("INSERT OR IGNORE INTO windows (video_id, start, end, embedding) "
                                        "VALUES (?, ?, ?, ?)", ((vid, *row) for row in rows))
        finally:
            source.close()

    def remove_stale(self, listing):
        """Delete the videos that are no longer in `listing` ({path: Stamp}) or whose stamp differs.
        Returns the number of videos deleted."""
        stale = [v.id for path, v in self.videos().items() if listing.get(path) != v.stamp]
        with self.db:
            for vid in stale:
                self._delete_video(vid)
        return len(stale)

    # -- what the faiss index must follow -------------------------------------------------------
    def embeddings(self, where="1", batch=65536):
        """Yield (ids int64 [n], embeddings float32 [n, D]) of the windows matching `where`."""
        cursor = self.db.execute(f"SELECT id, embedding FROM windows WHERE {where} ORDER BY id")
        while True:
            rows = cursor.fetchmany(batch)
            if not rows:
                return
            yield (np.array([r[0] for r in rows], dtype=np.int64),
                   np.stack([np.frombuffer(r[1], dtype=np.float32) for r in rows]))

    def removed_ids(self):
        return np.array([r[0] for r in self.db.execute("SELECT id FROM removed")], dtype=np.int64)

    def mark_synced(self, added, removed):
        """After the faiss index holding `added` and not `removed` was written."""
        with self.db:
            self.db.executemany("UPDATE windows SET indexed = 1 WHERE id = ?", [(int(i),) for i in added])
            self.db.executemany("DELETE FROM removed WHERE id = ?", [(int(i),) for i in removed])

    def mark_all_synced(self):
        with self.db:
            self.db.execute("UPDATE windows SET indexed = 1 WHERE indexed = 0")
            self.db.execute("DELETE FROM removed")

    def lookup(self, ids):
        """{window id: (video id, path, start, end)} of the ids still stored."""
        ids, found = [int(i) for i in ids], {}
        for first in range(0, len(ids), 10000):  # below SQLite's limit of bound parameters
            chunk = ids[first:first + 10000]
            rows = self.db.execute(f"SELECT w.id, v.id, v.path, w.start, w.end FROM windows w JOIN videos v "
                                   f"ON v.id = w.video_id WHERE w.id IN ({','.join('?' * len(chunk))})", chunk)
            found.update((row[0], row[1:]) for row in rows)
        return found

    def video_path(self, video_id):
        row = self.db.execute("SELECT path FROM videos WHERE id = ?", (video_id,)).fetchone()
        return row[0] if row else None
