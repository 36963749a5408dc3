"""MSR-VTT: 7k/9k training splits and the JSFusion 1k-A test set (SPEC §5)."""
import os

from .annotations import malformed, read_csv_columns, read_json, require_pairs
from .base import Pair, RetrievalDataset
from .loaders import make_reader

TRAIN_CSV_FORMAT = "a csv with a header row holding a `video_id` column (MSRVTT_train.9k.csv / 7k)"
DATA_JSON_FORMAT = ('MSRVTT_data.json: {"videos": [...], "sentences": [{"video_id": ..., '
                    '"caption": ...}, ...]}')
TEST_CSV_FORMAT = "a csv with the header `key,vid_key,video_id,sentence` (MSRVTT_JSFUSION_test.csv)"


def video_path(features_path, video_id):
    return os.path.join(features_path, f"{video_id}.mp4")


def read_sentences(data_json):
    """(video_id, caption) of every sentence of MSRVTT_data.json, in file order."""
    data = read_json(data_json, DATA_JSON_FORMAT)
    try:
        return [(item["video_id"], item["caption"]) for item in data["sentences"]]
    except (KeyError, TypeError) as error:
        raise malformed(data_json, DATA_JSON_FORMAT, f"missing {error}") from error


def load_train_pairs(train_csv, data_json, features_path, expand_sentences):
    """Training pairs.

    Without expansion: one pair per video of ``train_csv`` (in csv order) carrying all its
    captions, one of which is drawn per access. With ``expand_sentences``: one pair per
    sentence of the json whose video is in the split, in json order.
    """
    video_ids = [row["video_id"] for row in read_csv_columns(train_csv, ["video_id"], TRAIN_CSV_FORMAT)]
    sentences = read_sentences(data_json)
    if expand_sentences:
        wanted = set(video_ids)
        return require_pairs([Pair(video_path(features_path, vid), (caption,))
                              for vid, caption in sentences if vid in wanted],
                             "train", f"{train_csv} with the sentences of {data_json}")
    captions = {}
    for vid, caption in sentences:
        captions.setdefault(vid, []).append(caption)
    without = [vid for vid in video_ids if vid not in captions]
    if without:
        raise malformed(data_json, DATA_JSON_FORMAT,
                        f"no sentence for {len(without)} videos of {train_csv}, e.g. {without[0]}")
    return require_pairs([Pair(video_path(features_path, vid), tuple(captions[vid])) for vid in video_ids],
                         "train", train_csv)


def load_test_pairs(val_csv, features_path):
    """One pair per row of the JSFusion csv, in file order."""
    rows = read_csv_columns(val_csv, ["video_id", "sentence"], TEST_CSV_FORMAT)
    return require_pairs([Pair(video_path(features_path, row["video_id"]), (row["sentence"],)) for row in rows],
                         "test", val_csv)


def build_dataset(args, tokenizer, split):
    """`train`: the --train_csv split; any other split: the JSFusion test csv (--val_csv)."""
    if split == "train":
        pairs = load_train_pairs(args.train_csv, args.data_path, args.features_path, args.expand_msrvtt_sentences)
    else:
        pairs = load_test_pairs(args.val_csv, args.features_path)
    return RetrievalDataset(pairs, tokenizer, make_reader(args, split == "train"), args.max_words)
