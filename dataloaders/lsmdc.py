"""LSMDC: tab-separated clip annotations, videos located by video_path.json (SPEC §5)."""
import os

from .annotations import malformed, read_json, read_lines, require_pairs
from .base import Pair, RetrievalDataset
from .loaders import make_reader

ANNOTATION_FILES = {
    "train": "LSMDC16_annos_training.csv",
    "val": "LSMDC16_annos_val.csv",
    "test": "LSMDC16_challenge_1000_publictect.csv",  # the official file name, typo included
}
ANNOTATION_FORMAT = ("tab-separated lines <clip_id> <start_aligned> <end_aligned> "
                     "<start_extracted> <end_extracted> <sentence>")
VIDEO_PATH_FORMAT = "video_path.json: {clip_id: path of the video relative to --features_path}"


def read_annotations(path):
    """(clip_id, sentence) of every line, in file order."""
    rows = []
    for number, line in enumerate(read_lines(path, ANNOTATION_FORMAT), start=1):
        fields = line.split("\t")
        if len(fields) != 6:
            raise malformed(path, ANNOTATION_FORMAT, f"line {number} has {len(fields)} fields, not 6")
        rows.append((fields[0], fields[5]))
    return rows


def load_pairs(data_path, features_path, split):
    """One pair per annotation line whose clip is listed in video_path.json, in file order."""
    annotation_file = os.path.join(data_path, ANNOTATION_FILES[split])
    rows = read_annotations(annotation_file)
    path_file = os.path.join(data_path, "video_path.json")
    relative = read_json(path_file, VIDEO_PATH_FORMAT)
    if not isinstance(relative, dict):
        raise malformed(path_file, VIDEO_PATH_FORMAT, f"a {type(relative).__name__}, not an object")
    pairs = [Pair(os.path.join(features_path, relative[clip_id]), (sentence,))
             for clip_id, sentence in rows if clip_id in relative]
    return require_pairs(pairs, split, f"{annotation_file} (clips listed in {path_file})")


def build_dataset(args, tokenizer, split):
    pairs = load_pairs(args.data_path, args.features_path, split)
    return RetrievalDataset(pairs, tokenizer, make_reader(args, split == "train"), args.max_words)
