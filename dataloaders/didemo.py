"""DiDeMo, paragraph-to-video retrieval over the first 31 seconds (SPEC §5)."""
import os

from .annotations import malformed, read_json, read_lines, require_pairs, video_files
from .base import Pair, RetrievalDataset, paragraph_window
from .loaders import make_reader

LIST_FORMAT = "{split}_list.txt: one video file name per line"
DATA_FORMAT = '{split}_data.json: [{{"video": ..., "description": ..., "times": [...]}}, ...]'
# Listed in the splits but absent from the released videos; the original drops them.
MISSING_VIDEOS = ("37996615073@N01_3336195519_579ea4136c.3gp",
                  "44124421772@N01_2867159874_e39e716b7e.mpg",
                  "59627558@N00_4659075184_253744838b.3gp")
# Moments were annotated on at most 30 s; the window reads the first 31 s of every video.
WINDOW = (0, 31)


def find_videos(features_path, video_ids, lmdb):
    """video id -> file named as the id, or as the id plus one 4-character suffix such as
    ".mp4" (compressed copies of "x.3gp" are stored as "x.3gp.mp4")."""
    wanted = set(video_ids)
    found = {}
    for path in video_files(features_path, lmdb):
        name = os.path.basename(path)
        if name in wanted:
            found[name] = path
        if name[:-4] in wanted:
            found[name[:-4]] = path
    return found


def read_paragraphs(path, split, video_ids):
    """id -> descriptions of the listed videos joined with spaces, ids in first-seen order."""
    expected = DATA_FORMAT.format(split=split)
    items = read_json(path, expected)
    descriptions = {}
    try:
        for item in items:
            if item["video"] in video_ids:
                descriptions.setdefault(item["video"], []).append(item["description"])
    except (KeyError, TypeError) as error:
        raise malformed(path, expected, f"an item lacks {error}") from error
    return {vid: " ".join(texts) for vid, texts in descriptions.items()}


def load_pairs(data_path, features_path, split, lmdb=None):
    """One paragraph per listed video that has descriptions and a file, in the order the
    videos first appear in the data json; the known missing videos are skipped."""
    list_file = os.path.join(data_path, f"{split}_list.txt")
    video_ids = read_lines(list_file, LIST_FORMAT.format(split=split))
    video_ids = set(video_ids) - set(MISSING_VIDEOS)
    paragraphs = read_paragraphs(os.path.join(data_path, f"{split}_data.json"), split, video_ids)
    paths = find_videos(features_path, video_ids, lmdb)
    window = paragraph_window(*WINDOW)
    pairs = [Pair(paths[vid], (text,), window) for vid, text in paragraphs.items() if vid in paths]
    return require_pairs(pairs, split, f"{list_file} (videos described in {split}_data.json and found "
                                       f"under --features_path or --lmdb_dataset)")


def build_dataset(args, tokenizer, split):
    pairs = load_pairs(args.data_path, args.features_path, split, args.lmdb_dataset)
    return RetrievalDataset(pairs, tokenizer, make_reader(args, split == "train"), args.max_words)
