"""The dataset every retrieval split is: (video, caption) pairs -> CLIP4Clip's five arrays."""
import random
from dataclasses import dataclass
from typing import Optional, Tuple

from torch.utils.data import Dataset

from modules.tokenizer import tokenize_caption


@dataclass(frozen=True)
class Pair:
    """One sample.

    Attributes:
        video_path: the video file (its base name is the LMDB key).
        captions: one caption; or, for MSR-VTT training without expansion, all captions of
            the video, of which each access draws one at random.
        window: optional (start_seconds, end_seconds) of the video to sample from.
    """
    video_path: str
    captions: Tuple[str, ...]
    window: Optional[Tuple[float, float]] = None


class RetrievalDataset(Dataset):
    """Caption ids and a video clip per pair.

    Args:
        pairs: list of ``Pair``.
        tokenizer: ``modules.tokenizer.SimpleTokenizer``.
        reader: a ``VideoReader`` (its ``train`` flag selects the frame sampling).
        max_words: caption length Lw.
        cut_off_points: for multi-sentence evaluation (several captions per video, listed
            video by video), the index in ``pairs`` of each video's last caption. Sets the
            attributes the evaluation reads: ``multi_sentence_per_video``,
            ``cut_off_points``, ``sentence_num`` (= len(pairs)), ``video_num``.

    An item is ``(input_ids [1, Lw], input_mask [1, Lw], segment_ids [1, Lw]`` int64 arrays,
    ``video`` float32 tensor [1, T, 3, S, S], ``video_mask`` int64 array [1, T]); the default
    collate stacks them into a batch with a leading B.
    """

    def __init__(self, pairs, tokenizer, reader, max_words, cut_off_points=None):
        self.pairs = pairs
        self.tokenizer = tokenizer
        self.reader = reader
        self.max_words = max_words
        self.multi_sentence_per_video = cut_off_points is not None
        self.decoded_items = None
        if self.multi_sentence_per_video:
            self.cut_off_points = list(cut_off_points)
            self.decoded_items = set(self.cut_off_points)
            self.sentence_num = len(pairs)
            self.video_num = len(self.cut_off_points)

    def __len__(self):
        return len(self.pairs)

    def caption(self, index):
        """The caption of pair ``index``; a random one (Python's ``random``, as the original)
        when the pair carries several."""
        captions = self.pairs[index].captions
        if len(captions) == 1:
            return captions[0]
        return captions[random.randint(0, len(captions) - 1)]

    def __getitem__(self, index):
        pair = self.pairs[index]
        ids, mask, segments = tokenize_caption(self.tokenizer, self.caption(index), self.max_words)
        if self.decoded_items is None or index in self.decoded_items:
            video, video_mask = self.reader(pair.video_path, pair.window)
        else:
            video, video_mask = self.reader.blank()
        return ids[None], mask[None], segments[None], video, video_mask


def paragraph_window(start, end):
    """The original's clean-up of a paragraph's window: whole seconds, non-negative, ordered,
    and at least one second long. Returns (start, end)."""
    start, end = max(int(start), 0), max(int(end), 0)
    if start > end:
        start, end = end, start
    elif start == end:
        end += 1
    return start, end
