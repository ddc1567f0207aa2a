"""A low-resource-language user's own files, through the real CLI: a script the base's tokenizer does not cover
(Ge'ez under a Latin-only base) is refused, not trained on ``<unk>``; class names that differ only in case are
refused, not split into two classes; a tab-separated CoNLL token keeps its inner space; a dev multi-word entity
of a type seen in training is scored; a seed given twice is refused before any training; a CoNLL-U comment line
is named as such."""

from __future__ import annotations

import json

from adaptome.domains.multilingual import readers

from .conftest import DATA, invoke

FAST = ["--max-length", 48, "--batch-size", 8, "--seeds", "1"]
AMHARIC = ["ኢትዮጵያ በአፍሪካ ቀንድ የምትገኝ አገር ናት", "አዲስ አበባ የኢትዮጵያ ዋና ከተማ ናት", "ቡና በጣም ተወዳጅ መጠጥ ነው",
           "ተማሪዎቹ ትምህርት ቤት ሄዱ", "ዝናብ ዛሬ በብዛት ዘነበ", "እግር ኳስ ጨዋታ ትናንት ነበር"]


def _train(base, out, train, dev, *extra, task="topic", steps=2):
    return invoke(["multilingual", "train-task", "--base", base, "--task", task, "--train", train, "--eval", dev,
                   "--out", out, "--steps", steps, *FAST, *extra])


def _amharic_and_hausa_topic(tmp_path):
    """Two-class SIB-200-style files: Amharic (Ge'ez script) and Hausa (Latin), the same classes."""
    amh = tmp_path / "amh" / "train.tsv"
    amh.parent.mkdir()
    readers.write_topic_tsv(amh, [readers.Example(t, ["geography", "health"][i % 2], str(i))
                                  for i, t in enumerate(AMHARIC)])
    hau = tmp_path / "hau" / "dev.tsv"
    hau.parent.mkdir()
    readers.write_topic_tsv(hau, [e for e in readers.read_topic_tsv(DATA / "sib200" / "hau_Latn" / "dev.tsv")
                                  if e.label in ("geography", "health")])
    return amh, hau


def test_a_script_the_tokenizer_does_not_cover_is_refused(tiny_base, lang_adapter, text_splits, tmp_path):
    """The tiny base's Unigram tokenizer saw Latin-script text only: every Ge'ez word is '▁' + <unk>."""
    amh, hau_tsv = _amharic_and_hausa_topic(tmp_path)
    for train, dev in ((amh, hau_tsv), (hau_tsv, amh)):
        res = _train(tiny_base, tmp_path / "run", train, dev)
        assert res.exit_code == 2, res.output
        assert f"{amh}: 50% of its tokens are <unk>" in res.output and "Traceback" not in res.output, res.output
        assert not (tmp_path / "run").exists()
    # a covered run scored on the uncovered split
    assert _train(tiny_base, tmp_path / "ok", hau_tsv, hau_tsv, steps=1).exit_code == 0
    res = invoke(["multilingual", "evaluate", tmp_path / "ok", "--eval", amh, "--out", tmp_path / "ev_task"])
    assert res.exit_code == 2 and f"{amh}: 50% of its tokens are <unk>" in res.output, res.output
    assert not (tmp_path / "ev_task").exists()
    text = tmp_path / "amh.txt"
    text.write_text("\n".join(AMHARIC) + "\n", encoding="utf-8")
    hau = text_splits / "hau"
    for train, ev in ((text, hau / "test.txt"), (hau / "train.txt", text)):
        res = invoke(["multilingual", "train-language-adapter", "--base", tiny_base, "--train", train, "--eval", ev,
                      "--out", tmp_path / "la", "--steps", 1, "--max-length", 48, "--eval-sentences", 3])
        assert res.exit_code == 2 and f"{text}: 50% of its tokens are <unk>" in res.output, res.output
        assert not (tmp_path / "la").exists()
    # pseudo-perplexity of <unk> after <unk> is low and meaningless: refused as well
    res = invoke(["multilingual", "evaluate", lang_adapter, "--text", text, "--out", tmp_path / "ev"])
    assert res.exit_code == 2 and f"{text}: 50% of its tokens are <unk>" in res.output, res.output
    assert not (tmp_path / "ev").exists()


def test_a_partly_uncovered_file_trains_with_a_warning(tiny_base, tmp_path):
    """Code-mixed text (a few Ge'ez words in each Hausa sentence) is not a reason to refuse, but is reported."""
    rows = readers.read_topic_tsv(DATA / "sib200" / "hau_Latn" / "train.tsv")[:40]
    for e in rows:
        e.text += " " + AMHARIC[0]
    readers.write_topic_tsv(tmp_path / "train.tsv", rows)
    res = _train(tiny_base, tmp_path / "run", tmp_path / "train.tsv", DATA / "sib200" / "hau_Latn" / "dev.tsv")
    assert res.exit_code == 0, res.output
    assert f"warning: {tmp_path / 'train.tsv'}: " in res.output and "of its tokens are <unk>" in res.output
    shares = json.loads((tmp_path / "run" / "run.json").read_text())["unk_share"]
    assert 0.05 < shares["train"] < 0.2 and shares["eval"] < 0.05


def test_labels_that_differ_only_in_case_or_spaces_are_refused(tiny_base, tmp_path):
    train = tmp_path / "train.tsv"
    train.write_text("ID\ttweet\tlabel\n1\tna gode\tpositive\n2\tbabu kyau\tnegative\n3\tmadalla\tPositive\n",
                     encoding="utf-8")
    dev = tmp_path / "dev.tsv"
    dev.write_text("ID\ttweet\tlabel\n1\tna gode\tpositive\n", encoding="utf-8")
    res = _train(tiny_base, tmp_path / "run", train, dev, task="sentiment")
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    assert f"{train}:4: label 'Positive' differs only in case or spacing from 'positive' (line 2)" in res.output
    assert not (tmp_path / "run").exists()
    # surrounding spaces are stripped, so " positive " is "positive": not an error
    train.write_text("ID\ttweet\tlabel\n1\tna gode\tpositive\n2\tbabu kyau\tnegative\n3\tmadalla\t positive \n",
                     encoding="utf-8")
    assert _train(tiny_base, tmp_path / "run", train, dev, task="sentiment", steps=1).exit_code == 0
    assert json.loads((tmp_path / "run" / "run.json").read_text())["labels"] == ["negative", "positive"]


def test_tab_separated_conll_keeps_a_token_with_a_space(tmp_path):
    f = tmp_path / "uner.tsv"
    f.write_text("New York\tB-LOC\nCity\tI-LOC\nna\tO\n\nAbuja\tB-LOC\n", encoding="utf-8")
    sents = readers.read_conll(f)
    assert sents[0].words == ["New York", "City", "na"] and sents[0].tags == ["B-LOC", "I-LOC", "O"]
    # written back (predictions.tsv) tab-separated, so it reads back the same
    readers.write_conll(tmp_path / "back.tsv", sents)
    assert readers.read_conll(tmp_path / "back.tsv") == [readers.Sentence(s.words, s.tags, s.lines) for s in sents]


def test_conll_u_comment_line_is_named(tmp_path):
    f = tmp_path / "uner.conllu"
    f.write_text("# sent_id = 1\n# text = Kano ce\nKano B-LOC\nce O\n", encoding="utf-8")
    res = invoke(["multilingual", "train-task", "--base", tmp_path, "--task", "ner", "--train", f, "--eval", f,
                  "--out", tmp_path / "run"])
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    assert f"{f}:1: a CoNLL-U comment line" in res.output


def test_dev_multiword_entity_of_a_known_type_is_scored(tiny_base, tmp_path):
    """Training holds only one-word PER entities (B-PER); a two-word PER in dev (B-PER I-PER) is valid BIO."""
    tr, dv = tmp_path / "tr.txt", tmp_path / "dv.txt"
    tr.write_text("".join(f"Musa B-PER\nya O\nje O\n{loc} B-LOC\nCity I-LOC\n\n" for loc in ("Kano", "Abuja")),
                  encoding="utf-8")
    dv.write_text("Musa B-PER\nAli I-PER\nya O\nje O\nKano B-LOC\n", encoding="utf-8")
    res = _train(tiny_base, tmp_path / "run", tr, dv, task="ner", steps=1)
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "run" / "run.json").read_text())["labels"] == [
        "B-LOC", "B-PER", "I-LOC", "I-PER", "O"]
    # a type never seen in training is still refused
    dv.write_text("Musa B-PER\nya O\nje O\nNEPA B-ORG\n", encoding="utf-8")
    res = _train(tiny_base, tmp_path / "run2", tr, dv, task="ner", steps=1)
    assert res.exit_code == 2 and f"{dv}:4: label(s) ['B-ORG']" in res.output, res.output


def test_a_seed_given_twice_is_refused_before_training(tiny_base, tmp_path):
    sib = DATA / "sib200" / "hau_Latn"
    res = invoke(["multilingual", "train-task", "--base", tiny_base, "--task", "topic", "--train", sib / "train.tsv",
                  "--eval", sib / "dev.tsv", "--out", tmp_path / "run", "--steps", 1, "--seeds", "1,2,1"])
    assert res.exit_code == 2 and "--seeds '1,2,1': seed 1 is given twice" in res.output, res.output
    assert "train " not in res.output and not (tmp_path / "run").exists()
