"""NER subword label alignment on a hand-made example where words split into several subwords; word
predictions come from each word's first subword and entity F1 is computed on words."""

from __future__ import annotations

import pytest

from adaptome.core.evaluation import entity_f1
from adaptome.domains.multilingual.base import train_tokenizer
from adaptome.domains.multilingual.tasks import IGNORE, align_labels, word_predictions

LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
L2I = {lab: i for i, lab in enumerate(LABELS)}
I2L = dict(enumerate(LABELS))


def test_alignment_by_hand():
    # <s> Abu ##ja ##wa lives in Ka ##no </s>: words 0 (3 subwords), 1, 2, 3 (2 subwords)
    word_ids = [None, 0, 0, 0, 1, 2, 3, 3, None]
    tags = ["B-PER", "O", "O", "B-LOC"]
    assert align_labels(word_ids, tags, L2I, "first") == [IGNORE, 1, IGNORE, IGNORE, 0, 0, 3, IGNORE, IGNORE]
    # all subwords labelled; a B- tag continues as I- so the subword sequence stays valid BIO
    assert align_labels(word_ids, tags, L2I, "all") == [IGNORE, 1, 2, 2, 0, 0, 3, 4, IGNORE]
    with pytest.raises(ValueError, match="label mode"):
        align_labels(word_ids, tags, L2I, "last")


def test_word_predictions_take_the_first_subword_and_score_on_words():
    word_ids = [None, 0, 0, 0, 1, 2, 3, 3, None]
    # subword predictions disagree inside words: only the first subword of each word counts
    token_preds = [0, 1, 0, 3, 0, 0, 3, 1, 0]
    words, missing = word_predictions(word_ids, token_preds, 4, I2L)
    assert words == ["B-PER", "O", "O", "B-LOC"] and missing == 0
    assert entity_f1([["B-PER", "O", "O", "B-LOC"]], [words]) == 1.0
    # a truncated sentence: words 4 and 5 never reached the model and are predicted O, and counted
    words, missing = word_predictions(word_ids, token_preds, 6, I2L)
    assert words[4:] == ["O", "O"] and missing == 2
    gold = ["B-PER", "O", "O", "B-LOC", "B-LOC", "I-LOC"]
    # 2 of 3 gold entities found, both predictions right: P = 1, R = 2/3, F1 = 0.8
    assert entity_f1([gold], [words]) == pytest.approx(0.8)


def test_alignment_with_a_real_subword_tokenizer(tmp_path):
    """A Unigram tokenizer trained here splits the long, rare word into several subwords."""
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(["ya je Kano da Abuja"] * 50 + ["ta yi aiki a gida"] * 50) + "\n", encoding="utf-8")
    tok = train_tokenizer([corpus], "xlm-roberta", vocab_size=60, max_length=32)
    words = ["Musa", "Kwankwasiyya", "ya", "je", "Kano"]
    tags = ["B-PER", "I-PER", "O", "O", "B-LOC"]
    enc = tok([words], is_split_into_words=True)
    wids = enc.word_ids(0)
    pieces = [w for w in wids if w == 1]
    assert len(pieces) >= 3, tok.convert_ids_to_tokens(enc["input_ids"][0])
    first = align_labels(wids, tags, L2I, "first")
    every = align_labels(wids, tags, L2I, "all")
    for k, w in enumerate(wids):
        if w is None:
            assert first[k] == every[k] == IGNORE
        elif k > 0 and wids[k - 1] == w:
            assert first[k] == IGNORE and every[k] == L2I[tags[w].replace("B-", "I-")]
        else:
            assert first[k] == every[k] == L2I[tags[w]]
    assert word_predictions(wids, [x if x != IGNORE else 0 for x in every], len(words), I2L)[0] == tags
