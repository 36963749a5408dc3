"""MSVD: every caption is a sample; val/test are multi-sentence (SPEC §5, §6)."""
import os

from .annotations import malformed, read_lines, read_pickle, require_pairs, video_files
from .base import Pair, RetrievalDataset
from .loaders import make_reader

LIST_FORMAT = "{split}_list.txt: one video id per line"
CAPTIONS_FORMAT = "raw-captions.pkl: a pickled dict video id -> list of captions, each a list of words"


def find_videos(features_path, video_ids, lmdb):
    """video id -> file whose name without its last extension is the id (the folder is walked,
    or the LMDB's keys are listed)."""
    wanted = set(video_ids)
    found = {}
    for path in video_files(features_path, lmdb):
        stem = ".".join(os.path.basename(path).split(".")[:-1])
        if stem in wanted:
            found[stem] = path
    return found


def load_pairs(data_path, features_path, split, lmdb=None):
    """All (video, caption) pairs of a split, video by video in list order.

    Returns:
        (pairs, cut_off_points): ``cut_off_points[v]`` is the index in ``pairs`` of the last
        caption of the v-th video. A video without a file keeps its captions and reads as a
        broken video (a masked blank clip), so the bookkeeping stays that of the split.
    """
    list_file = os.path.join(data_path, f"{split}_list.txt")
    video_ids = read_lines(list_file, LIST_FORMAT.format(split=split))
    require_pairs(video_ids, split, list_file)
    caption_file = os.path.join(data_path, "raw-captions.pkl")
    captions = read_pickle(caption_file, CAPTIONS_FORMAT)
    if not isinstance(captions, dict):
        raise malformed(caption_file, CAPTIONS_FORMAT, f"a {type(captions).__name__}, not a dict")
    without = [vid for vid in video_ids if not captions.get(vid)]
    if without:
        raise malformed(caption_file, CAPTIONS_FORMAT,
                        f"no captions for {len(without)} ids of {list_file}, e.g. {without[0]}")
    paths = find_videos(features_path, video_ids, lmdb)
    pairs, cut_off_points = [], []
    for vid in video_ids:
        path = paths.get(vid, os.path.join(features_path, vid))
        for words in captions[vid]:
            if isinstance(words, str) or not all(isinstance(w, str) for w in words):
                raise malformed(caption_file, CAPTIONS_FORMAT, f"a caption of {vid} is not a word list")
            pairs.append(Pair(path, (" ".join(words),)))
        cut_off_points.append(len(pairs) - 1)
    return pairs, cut_off_points


def build_dataset(args, tokenizer, split):
    pairs, cut_off_points = load_pairs(args.data_path, args.features_path, split, args.lmdb_dataset)
    train = split == "train"
    return RetrievalDataset(pairs, tokenizer, make_reader(args, train), args.max_words,
                            cut_off_points=None if train else cut_off_points)
