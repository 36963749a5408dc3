"""`query`: the best windows of an index for a caption or for an example video."""
import json
import os

import numpy as np
from torch.utils.data import DataLoader

from dataloaders.video_reader import BROKEN_VIDEO_ERRORS

from . import vectors
from .collection import FolderCollection, probe_duration, window_bounds
from .indexing import WindowDataset
from .model import SearchModel
from .store import MAIN_FILE, Store

GROWTH = 4  # --max_per_video: candidates fetched grow 4x until top_k distinct results are found


class Searcher:
    """An index folder opened for searching, with the model that built it.

    Args:
        index_dir: the folder `index` wrote.
        checkpoint: the model; default the checkpoint recorded in the index (it must be the same
            file: its SHA-256 is checked).
        nprobe: IVF lists searched per query (an exact index ignores it).
    """

    def __init__(self, index_dir, checkpoint=None, nprobe=vectors.NPROBE):
        path = os.path.join(index_dir, MAIN_FILE)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"--index {index_dir} holds no index ({MAIN_FILE} is missing); "
                                    "build it with `python -m apps.search index`")
        self.store = Store(path, readonly=True)
        self.settings = self.store.info()
        if nprobe < 1:
            raise ValueError(f"--nprobe must be >= 1, got {nprobe}")
        self.index = vectors.read_index(index_dir, nprobe)
        if self.index is None or "checkpoint" not in self.settings:
            raise FileNotFoundError(f"--index {index_dir} is incomplete ({vectors.FILE} is missing): an "
                                    "`index` run did not finish; run it again")
        checkpoint = checkpoint or self.settings["checkpoint"]
        if not os.path.isfile(checkpoint):
            raise FileNotFoundError(f"the index's checkpoint {checkpoint} does not exist; pass --checkpoint")
        self.model = SearchModel(checkpoint)
        if self.model.sha256 != self.settings["checkpoint_sha256"]:
            raise ValueError(f"--checkpoint {checkpoint} is not the model that built {index_dir} "
                             f"(SHA-256 {self.model.sha256[:12]}... vs {self.settings['checkpoint_sha256'][:12]}...)")

    def path(self, name):
        """The path shown for a stored video: absolute for a folder, the key for an LMDB."""
        if self.settings["source"] == "folder":
            return os.path.join(self.settings["videos"], name)
        return name

    def search(self, vector, top_k=10, max_per_video=None):
        """Best windows for one query vector float32 [D], best first.

        Returns:
            list of dicts {path, start, end, score, window_id, video_id}, at most `top_k`, at most
            `max_per_video` per video when given.
        """
        total = self.index.ntotal
        fetch = top_k if not max_per_video else top_k * GROWTH
        while True:
            scores, ids = vectors.search(self.index, vector[None], fetch)
            results = self._results(scores[0], ids[0], top_k, max_per_video)
            if len(results) >= top_k or fetch >= total:
                return results
            fetch = min(total, fetch * GROWTH)

    def _results(self, scores, ids, top_k, max_per_video):
        rows = self.store.lookup(ids[ids >= 0])  # ids of deleted windows are gone from the store
        results, per_video = [], {}
        for score, window_id in zip(scores.tolist(), ids.tolist()):
            if window_id not in rows:
                continue
            video_id, name, start, end = rows[window_id]
            if max_per_video and per_video.get(video_id, 0) >= max_per_video:
                continue
            per_video[video_id] = per_video.get(video_id, 0) + 1
            results.append({"path": self.path(name), "start": start, "end": end, "score": round(score, 6),
                            "window_id": window_id, "video_id": video_id})
            if len(results) == top_k:
                break
        return results

    def text_vector(self, text):
        if not text.strip():
            raise ValueError("--text is empty")
        return self.model.encode_text([text])[0]

    def video_vector(self, path, batch_size=8):
        """The mean of an example video's window embeddings (unit norm), windows as the index's."""
        if not os.path.isfile(path):
            raise FileNotFoundError(f"--video {path} does not exist")
        try:
            duration = probe_duration(path)
        except (*BROKEN_VIDEO_ERRORS, ValueError) as error:
            raise ValueError(f"--video {path} cannot be read: {type(error).__name__}: {error}") from None
        folder = FolderCollection(os.path.dirname(os.path.abspath(path)))
        name = os.path.basename(path)
        windows = [(name, s, e) for s, e in window_bounds(duration, self.settings["window"], self.settings["stride"])]
        loader = DataLoader(WindowDataset(windows, folder, self.model.reader()), batch_size=batch_size)
        embeddings = []
        for _, video, mask in loader:
            if int(mask.sum()) == 0:
                raise ValueError(f"--video {path} cannot be decoded")
            embeddings.append(self.model.encode_clips(video, mask))
        mean = np.concatenate(embeddings).mean(axis=0)
        return (mean / max(np.linalg.norm(mean), 1e-12)).astype(np.float32)


def public(results):
    """The --json form: [{path, start, end, score}], best first."""
    return [{key: r[key] for key in ("path", "start", "end", "score")} for r in results]


def format_time(seconds):
    minutes, seconds = divmod(seconds, 60)
    return f"{int(minutes)}:{seconds:04.1f}"


def format_table(results):
    """A plain-text table: rank, score, start-end (m:ss.s), path."""
    lines = [f"{'#':>3}  {'score':>7}  {'window':<15}  path"]
    for rank, r in enumerate(results, 1):
        window = f"{format_time(r['start'])}-{format_time(r['end'])}"
        lines.append(f"{rank:>3}  {r['score']:7.4f}  {window:<15}  {r['path']}")
    return "\n".join(lines)


def run_query(index_dir, text=None, video=None, top_k=10, max_per_video=None, as_json=False, checkpoint=None,
              nprobe=vectors.NPROBE):
    """The `query` command's output (a table or JSON text)."""
    if (text is None) == (video is None):
        raise ValueError("pass exactly one of --text and --video")
    if top_k < 1:
        raise ValueError(f"--top_k must be >= 1, got {top_k}")
    if max_per_video is not None and max_per_video < 1:
        raise ValueError(f"--max_per_video must be >= 1, got {max_per_video}")
    searcher = Searcher(index_dir, checkpoint, nprobe)
    vector = searcher.text_vector(text) if text is not None else searcher.video_vector(video)
    results = searcher.search(vector, top_k, max_per_video)
    return json.dumps(public(results), indent=1) if as_json else format_table(results)
