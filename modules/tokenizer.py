"""CLIP's byte-level BPE tokenizer and the caption encoding every dataset uses.

The vocabulary file `bpe_simple_vocab_16e6.txt.gz` (OpenAI, MIT licence) lies beside this file.
Vocabulary = 256 byte symbols, the same 256 with the end-of-word marker `</w>`, 48,894 merges,
then `<|startoftext|>` (49406) and `<|endoftext|>` (49407): 49,408 ids in all.
"""
import functools
import gzip
import html
import os

import ftfy
import numpy as np
import regex

VOCAB_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bpe_simple_vocab_16e6.txt.gz")
START_TOKEN = "<|startoftext|>"
END_TOKEN = "<|endoftext|>"
NUM_MERGES = 49152 - 256 - 2  # lines 2 .. 48,895 of the vocabulary file
END_OF_WORD = "</w>"


@functools.lru_cache()
def bytes_to_unicode():
    """GPT-2's reversible map from the 256 byte values to printable unicode characters.

    Printable bytes map to themselves; the others, in byte order, to code points 256, 257, ...
    The dict lists printable bytes first, then the others: this order defines the vocabulary ids.
    """
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    others = [b for b in range(256) if b not in printable]
    table = {b: chr(b) for b in printable}
    table.update({b: chr(256 + i) for i, b in enumerate(others)})
    return table


def clean_text(text):
    """ftfy, HTML-unescape twice, collapse whitespace, lower-case (as CLIP does)."""
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return regex.sub(r"\s+", " ", text).strip().lower()


def pairs_of(word):
    """The set of adjacent symbol pairs of a tuple of symbols."""
    return set(zip(word[:-1], word[1:]))


class SimpleTokenizer:
    """CLIP BPE: `encode(text) -> list[int]` without start/end ids, `decode(ids) -> str`."""

    def __init__(self, vocab_path=VOCAB_PATH):
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {v: k for k, v in self.byte_encoder.items()}
        with gzip.open(vocab_path, "rt", encoding="utf-8") as f:
            lines = f.read().split("\n")
        merges = [tuple(line.split()) for line in lines[1:NUM_MERGES + 1]]
        symbols = list(self.byte_encoder.values())
        vocab = symbols + [s + END_OF_WORD for s in symbols] + ["".join(m) for m in merges]
        vocab += [START_TOKEN, END_TOKEN]
        self.encoder = {token: i for i, token in enumerate(vocab)}
        self.decoder = {i: token for token, i in self.encoder.items()}
        self.bpe_ranks = {merge: rank for rank, merge in enumerate(merges)}
        self.cache = {START_TOKEN: START_TOKEN, END_TOKEN: END_TOKEN}
        self.pattern = regex.compile(
            r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+",
            regex.IGNORECASE)
        self.sot_id = self.encoder[START_TOKEN]
        self.eot_id = self.encoder[END_TOKEN]

    def bpe(self, piece):
        """Merge the byte symbols of one pre-tokenised piece; returns space-separated tokens."""
        if piece in self.cache:
            return self.cache[piece]
        word = tuple(piece[:-1]) + (piece[-1] + END_OF_WORD,)
        while len(word) > 1:
            pair = min(pairs_of(word), key=lambda p: self.bpe_ranks.get(p, float("inf")))
            if pair not in self.bpe_ranks:
                break
            word = self.merge(word, pair)
        tokens = " ".join(word)
        self.cache[piece] = tokens
        return tokens

    @staticmethod
    def merge(word, pair):
        """Replace every occurrence of `pair` in `word` (left to right) by the merged symbol."""
        first, second = pair
        merged = []
        i = 0
        while i < len(word):
            if i < len(word) - 1 and word[i] == first and word[i + 1] == second:
                merged.append(first + second)
                i += 2
            else:
                merged.append(word[i])
                i += 1
        return tuple(merged)

    def encode(self, text):
        ids = []
        for piece in self.pattern.findall(clean_text(text)):
            symbols = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder[token] for token in self.bpe(symbols).split(" "))
        return ids

    def decode(self, ids):
        text = "".join(self.decoder[i] for i in ids)
        data = bytearray(self.byte_decoder[c] for c in text)
        return data.decode("utf-8", errors="replace").replace(END_OF_WORD, " ")


def tokenize_caption(tokenizer, caption, max_words):
    """Caption -> (input_ids, input_mask, segment_ids), three int64 arrays of shape [max_words].

    ids = [49406] + BPE tokens truncated to max_words - 2 + [49407], zero-padded;
    the mask is 1 on real ids; segment ids are all 0 (CLIP4Clip's convention).
    """
    if max_words < 2:
        raise ValueError(f"--max_words must be at least 2 (start and end tokens), got {max_words}")
    tokens = tokenizer.encode(caption)[:max_words - 2]
    ids = [tokenizer.sot_id] + tokens + [tokenizer.eot_id]
    input_ids = np.zeros(max_words, dtype=np.int64)
    input_ids[:len(ids)] = ids
    input_mask = np.zeros(max_words, dtype=np.int64)
    input_mask[:len(ids)] = 1
    segment_ids = np.zeros(max_words, dtype=np.int64)
    return input_ids, input_mask, segment_ids
