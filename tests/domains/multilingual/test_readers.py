"""Readers round-trip the shipped formats and name the file and line of a malformed line; an unseen
label in an evaluation split is an error."""

from __future__ import annotations

import pytest

from adaptome.domains.multilingual import readers
from adaptome.domains.multilingual.readers import DataError
from adaptome.domains.multilingual.task_train import read_task_data

from .conftest import DATA


@pytest.mark.parametrize("rel", ["sib200/hau_Latn/dev.tsv", "sib200/swh_Latn/train.tsv"])
def test_topic_tsv_round_trips_byte_for_byte(rel, tmp_path):
    src = DATA / rel
    examples = readers.read_topic_tsv(src)
    labels = set(readers.read_labels(src.with_name("labels.txt")))
    assert len(examples) in (99, 701) and {e.label for e in examples} <= labels
    readers.write_topic_tsv(tmp_path / "x.tsv", examples)
    assert (tmp_path / "x.tsv").read_bytes() == src.read_bytes()


def test_sentiment_tsv_round_trips(tmp_path):
    src = DATA / "afrisenti" / "hau" / "dev.tsv"
    examples = readers.read_sentiment_tsv(src)
    assert len(examples) == 150 and {e.label for e in examples} == {"negative", "neutral", "positive"}
    readers.write_sentiment_tsv(tmp_path / "x.tsv", examples)
    assert readers.read_sentiment_tsv(tmp_path / "x.tsv") == examples
    assert (tmp_path / "x.tsv").read_text(encoding="utf-8") == src.read_text(encoding="utf-8")


def test_conll_round_trips(tmp_path):
    src = DATA / "masakhaner2" / "yor" / "dev.txt"
    sents = readers.read_conll(src)
    assert len(sents) == 100 and all(len(s.words) == len(s.tags) for s in sents)
    readers.write_conll(tmp_path / "x.txt", sents)
    assert readers.read_conll(tmp_path / "x.txt") == sents
    assert {t for s in sents for t in s.tags} <= {"O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC",
                                                  "B-DATE", "I-DATE"}


def test_malformed_lines_name_file_and_line(tmp_path):
    bad = tmp_path / "bad.tsv"
    bad.write_text("index_id\tcategory\ttext\n1\tsports\tA match.\n2\thealth no tab here\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.tsv:3: expected 3 tab-separated fields, found 2"):
        readers.read_topic_tsv(bad)
    conll = tmp_path / "bad.txt"
    conll.write_text("Kano B-LOC\nna O\n\nAbuja\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.txt:4: expected 'token tag'"):
        readers.read_conll(conll)
    conll.write_text("Kano B-LOC\nna X-LOC\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.txt:2: tag 'X-LOC'"):
        readers.read_conll(conll)
    senti = tmp_path / "s.tsv"
    senti.write_text("tweet\tlabel\nok\tpositive\n\tnegative\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"s\.tsv:3: empty text"):
        readers.read_sentiment_tsv(senti)
    (tmp_path / "h.tsv").write_text("id\tcategory\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"h\.tsv:1: header .* lacks a column named text"):
        readers.read_topic_tsv(tmp_path / "h.tsv")


def test_unknown_label_in_dev_is_an_error(tmp_path):
    train = tmp_path / "train.tsv"
    train.write_text("tweet\tlabel\na\tpositive\nb\tnegative\n", encoding="utf-8")
    dev = tmp_path / "dev.tsv"
    dev.write_text("tweet\tlabel\nc\tpositive\nd\tneutral\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"dev\.tsv:3: label\(s\) \['neutral'\] do not occur in the training data"):
        read_task_data("sentiment", str(train), str(dev))
    ner_train, ner_dev = tmp_path / "tr.txt", tmp_path / "dv.txt"
    ner_train.write_text("Kano B-LOC\nna O\n", encoding="utf-8")
    ner_dev.write_text("Kano B-LOC\n\nya O\nMusa B-PER\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"dv\.txt:4: label\(s\) \['B-PER'\]"):
        read_task_data("ner", str(ner_train), str(ner_dev))
    # SIB-200: labels.txt beside the training file is the label set
    sib = DATA / "sib200" / "hau_Latn"
    _, _, labels = read_task_data("topic", str(sib / "train.tsv"), str(sib / "dev.tsv"))
    assert labels == readers.read_labels(DATA / "sib200/hau_Latn/labels.txt")
