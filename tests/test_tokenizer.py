import random

import numpy as np
import pytest

from modules.tokenizer import SimpleTokenizer, tokenize_caption

WORDS = ("a man is playing guitar on stage while people dance in the street at night cat dog video "
         "cooking recipe woman talks about football game news anchor car racing kids swimming pool "
         "don't it's we're they've I'm you'll he'd can't").split()
SPECIAL = ["café", "naïve", "Ünïcödé", "日本語のテキスト", "中文字幕", "Привет мир", "مرحبا", "😀", "🎸🔥",
           "👩‍👩‍👧", "&amp;", "&lt;b&gt;", "&amp;amp;", "&quot;hi&quot;", "&#39;", "3.14159", "1,000,000",
           "2022", "x²", "½", "\t", "\n", "  ", "---", "!!!", "?!", "(parens)", "[brackets]", "#hashtag",
           "@user", "http://example.com/a?b=c", "e-mail", "C++", "<|endoftext|", "<startoftext>",
           "ﬁ ligature", "Ａｂｃ", "\u00a0nbsp", "\u200bzero-width", "ß", "İstanbul", "ÅNGSTRÖM", "'s",
           "O'Neil's", "rock'n'roll", "MiXeD CaSe", "ALLCAPS", "x" * 60]


def random_caption(rng):
    parts = []
    for _ in range(rng.randint(1, 40)):
        if rng.random() < 0.3:
            parts.append(rng.choice(SPECIAL))
        elif rng.random() < 0.1:
            parts.append(str(rng.randint(0, 10 ** rng.randint(1, 9))))
        else:
            word = rng.choice(WORDS)
            parts.append(word.upper() if rng.random() < 0.1 else word)
    glue = rng.choice([" ", "  ", "", ", ", " - "])
    return glue.join(parts)


def captions(n=1200, seed=0):
    rng = random.Random(seed)
    fixed = ["a photo of a cat", "", " ", "A MAN IS SINGING.", " ".join(WORDS * 20), "".join(SPECIAL)]
    return fixed + [random_caption(rng) for _ in range(n)]


@pytest.fixture(scope="module")
def tokenizer():
    return SimpleTokenizer()


def test_known_ids(tokenizer):
    assert tokenizer.encode("a photo of a cat") == [320, 1125, 539, 320, 2368]
    assert tokenizer.sot_id == 49406 and tokenizer.eot_id == 49407
    assert len(tokenizer.encoder) == 49408


def test_matches_open_clip(tokenizer):
    # open_clip renamed its special tokens (`<end_of_text>`), so the literal `<|endoftext|>` inside a
    # caption is ordinary text there; OpenAI's tokenizer, which the original uses, maps it to its id
    # (tested below). The captions here hold near-misses of those strings instead.
    open_clip_tokenizer = pytest.importorskip("open_clip.tokenizer").SimpleTokenizer()
    texts = captions()
    assert len(texts) >= 1000
    mismatches = [t for t in texts if tokenizer.encode(t) != open_clip_tokenizer.encode(t)]
    assert mismatches == []
    long_ids = [tokenizer.encode(t) for t in texts]
    assert max(len(ids) for ids in long_ids) > 200  # very long captions were exercised


def test_special_tokens_typed_in_captions(tokenizer):
    assert tokenizer.encode("<|endoftext|>") == [49407]
    assert tokenizer.encode("a <|startoftext|> b") == [320, 49406, 321]
    assert tokenizer.encode("A <|EndOfText|>") == [320, 49407]  # the regex is case-insensitive
    assert tokenizer.encode("a <|endoftext| b") != tokenizer.encode("a <|endoftext|> b")


def test_decode_round_trip(tokenizer):
    text = "a man is playing guitar, café 😀 2022!"
    assert tokenizer.decode(tokenizer.encode(text)).strip() == "a man is playing guitar , café 😀 2 0 2 2 !"


def test_tokenize_caption_pads_and_truncates(tokenizer):
    ids, mask, segment = tokenize_caption(tokenizer, "a photo of a cat", max_words=10)
    np.testing.assert_array_equal(ids, [49406, 320, 1125, 539, 320, 2368, 49407, 0, 0, 0])
    np.testing.assert_array_equal(mask, [1, 1, 1, 1, 1, 1, 1, 0, 0, 0])
    np.testing.assert_array_equal(segment, np.zeros(10))
    assert ids.dtype == mask.dtype == segment.dtype == np.int64
    ids, mask, _ = tokenize_caption(tokenizer, "a photo of a cat", max_words=4)
    np.testing.assert_array_equal(ids, [49406, 320, 1125, 49407])  # truncated to max_words - 2 tokens
    assert mask.sum() == 4
    ids, mask, _ = tokenize_caption(tokenizer, "", max_words=5)
    np.testing.assert_array_equal(ids, [49406, 49407, 0, 0, 0])


def test_tokenize_caption_rejects_tiny_max_words(tokenizer):
    with pytest.raises(ValueError, match="--max_words"):
        tokenize_caption(tokenizer, "a cat", max_words=1)
