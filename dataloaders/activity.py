"""ActivityNet Captions, paragraph-to-video retrieval (SPEC §5); evaluation uses val_1."""
import math
import os

from .annotations import malformed, read_json, require_pairs
from .base import Pair, RetrievalDataset, paragraph_window
from .loaders import make_reader

ID_FILES = {"train": "train_ids.json", "val": "val_ids.json"}
CAPTION_FILES = {"train": "train.json", "val": "val_1.json"}
IDS_FORMAT = '{name}: a JSON list of ids like "v_XXXXXXXXXXX"'
CAPTIONS_FORMAT = '{name}: {"v_XXXXXXXXXXX": {"duration": seconds, "sentences": [...], ...}, ...}'
VIDEO_PATH_FORMAT = "video_path.json: {video id without v_: path relative to --features_path}"
# Known to be broken in the released data; the original drops it from every split.
BROKEN_VIDEOS = ("NHznDFD3V3k",)


def read_paragraphs(path, name):
    """id -> (all sentences joined with spaces, duration in seconds)."""
    expected = CAPTIONS_FORMAT.replace("{name}", name)
    data = read_json(path, expected)
    try:
        return {key: (" ".join(value["sentences"]), float(value["duration"]))
                for key, value in data.items()}
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise malformed(path, expected, f"bad entry: {error}") from error


def load_pairs(data_path, features_path, split):
    """One paragraph per video, in the order of the id file (repeated ids counted once).

    Each pair's window is [0, ceil(duration)] seconds. Videos without captions or without an
    entry in video_path.json are skipped, as is the known broken video.
    """
    id_file = os.path.join(data_path, ID_FILES[split])
    ids = read_json(id_file, IDS_FORMAT.format(name=ID_FILES[split]))
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise malformed(id_file, IDS_FORMAT.format(name=ID_FILES[split]), "not a list of strings")
    caption_file = os.path.join(data_path, CAPTION_FILES[split])
    paragraphs = read_paragraphs(caption_file, CAPTION_FILES[split])
    path_file = os.path.join(data_path, "video_path.json")
    relative = read_json(path_file, VIDEO_PATH_FORMAT)
    if not isinstance(relative, dict):
        raise malformed(path_file, VIDEO_PATH_FORMAT, f"a {type(relative).__name__}, not an object")
    pairs = []
    for pseudo_id in dict.fromkeys(ids):
        video_id = pseudo_id[2:]  # "v_" prefix
        if video_id in BROKEN_VIDEOS or pseudo_id not in paragraphs or video_id not in relative:
            continue
        text, duration = paragraphs[pseudo_id]
        window = paragraph_window(0, math.ceil(duration))
        pairs.append(Pair(os.path.join(features_path, relative[video_id]), (text,), window))
    return require_pairs(pairs, split, f"{id_file} (videos with captions in {caption_file} and listed in "
                                       f"{path_file})")


def build_dataset(args, tokenizer, split):
    pairs = load_pairs(args.data_path, args.features_path, split)
    return RetrievalDataset(pairs, tokenizer, make_reader(args, split == "train"), args.max_words)
