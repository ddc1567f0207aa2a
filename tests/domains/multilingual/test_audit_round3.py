"""A low-resource-language researcher's own files, through the real CLI (audit round 3): one Yoruba split in
NFC and in NFD (decomposed diacritics) scores the same for the model and both baselines, also under a tokenizer
that does not normalise (as mBERT's), and a label spelt both ways is one class; a CoNLL line with another number
of fields than the file's first (``New York B-LOC`` space-separated, a stray tag) is refused, a consistent
CoNLL-2003 four-column file reads its tag from the last column; pseudo-perplexity on fewer than 20 held-out
sentences warns."""

from __future__ import annotations

import csv
import json
import shutil
import unicodedata

from adaptome.domains.multilingual import readers

from .conftest import DATA, invoke

FAST = ["--max-length", 48, "--batch-size", 8, "--seeds", "1"]


def _forms(tmp_path, name: str, lines: list[str]) -> dict[str, object]:
    """The same lines written once in NFC and once in NFD."""
    out = {}
    for form in ("NFC", "NFD"):
        path = tmp_path / form / name
        path.parent.mkdir(exist_ok=True)
        path.write_text("".join(unicodedata.normalize(form, ln) + "\n" for ln in lines), encoding="utf-8")
        out[form] = path
    return out


def _rows(folder) -> dict[str, tuple[str, str, str]]:
    with open(folder / "results.csv", encoding="utf-8") as fh:
        return {r["adapter"]: (r["accuracy"], r["weighted_f1"], r["value"]) for r in csv.DictReader(fh)}


def _raw_tokenizer_base(tiny_base, tmp_path):
    """The tiny base with its tokenizer's NFC normaliser removed: a tokenizer that reads the characters as they come
    (mBERT's BertNormalizer without accent stripping does no Unicode normalisation either)."""
    raw = tmp_path / "base_raw"
    shutil.copytree(tiny_base, raw)
    spec = json.loads((raw / "tokenizer.json").read_text(encoding="utf-8"))
    spec["normalizer"] = None
    (raw / "tokenizer.json").write_text(json.dumps(spec), encoding="utf-8")
    return raw


def test_nfc_and_nfd_spellings_of_one_split_score_the_same(tiny_base, tmp_path):
    sib = DATA / "sib200" / "yor_Latn"
    train = (sib / "train.tsv").read_text(encoding="utf-8").splitlines()[:161]
    dev = (sib / "dev.tsv").read_text(encoding="utf-8").splitlines()[:61]
    tr, dv = _forms(tmp_path, "train.tsv", train), _forms(tmp_path, "dev.tsv", dev)
    assert tr["NFC"].read_bytes() != tr["NFD"].read_bytes()
    for base in (tiny_base, _raw_tokenizer_base(tiny_base, tmp_path)):
        run = tmp_path / f"run_{base.name}"
        res = invoke(["multilingual", "train-task", "--base", base, "--task", "topic", "--lang", "yor",
                      "--train", tr["NFC"], "--eval", dv["NFC"], "--out", run, "--steps", 3, *FAST])
        assert res.exit_code == 0, res.output
        scores = {}
        for form in ("NFC", "NFD"):
            out = tmp_path / f"ev_{base.name}_{form}"
            res = invoke(["multilingual", "evaluate", run, "--eval", dv[form], "--eval-lang", "yor", "--out", out])
            assert res.exit_code == 0, res.output
            scores[form] = _rows(out)
        # before: the char n-gram baseline fell from macro-F1 0.58 to 0.47 on the NFD copy of the same split
        assert scores["NFC"] == scores["NFD"], scores
        assert json.loads((run / "run.json").read_text(encoding="utf-8"))["unicode_normal_form"] == "NFC"


def test_a_label_spelt_precomposed_and_decomposed_is_one_class(tiny_base, tmp_path):
    sentences = [e.text for e in readers.read_topic_tsv(DATA / "sib200" / "yor_Latn" / "dev.tsv")][:12]
    health = "ìlera"  # precomposed i-grave in the first half, i + U+0300 in the second
    labels = [unicodedata.normalize("NFC" if i < 6 else "NFD", health) if i % 2 else "ere idaraya"
              for i in range(12)]
    path = tmp_path / "yor" / "train.tsv"
    path.parent.mkdir()
    path.write_text("index_id\tcategory\ttext\n" + "".join(f"{i}\t{lab}\t{t}\n" for i, (lab, t) in
                                                           enumerate(zip(labels, sentences))), encoding="utf-8")
    res = invoke(["multilingual", "train-task", "--base", tiny_base, "--task", "topic", "--train", path, "--eval",
                  path, "--out", tmp_path / "run", "--steps", 1, *FAST])
    assert res.exit_code == 0, res.output
    # before: three classes, 'ìlera' twice
    assert json.loads((tmp_path / "run" / "run.json").read_text(encoding="utf-8"))["labels"] == ["ere idaraya",
                                                                                                 "ìlera"]


def _ner_train(tiny_base, tmp_path, lines: list[str], out: str):
    path = tmp_path / f"{out}.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path, invoke(["multilingual", "train-task", "--base", tiny_base, "--task", "ner", "--train", path,
                         "--eval", path, "--out", tmp_path / out, "--steps", 1, *FAST])


def test_a_conll_line_with_another_number_of_fields_is_refused(tiny_base, tmp_path):
    sentence = ["Musa B-PER", "ya O", "tafi O", "Kano B-LOC", "", "Ali B-PER", "yana O", "New York B-LOC", ""]
    path, res = _ner_train(tiny_base, tmp_path, sentence, "spaces")
    assert res.exit_code == 2, res.output  # before: trained on the token 'New' tagged B-LOC, 'York' lost
    assert f"{path}:8: 3 fields" in res.output and "line 1 has 2" in res.output and "tab-separated" in res.output
    assert "Traceback" not in res.output and not (tmp_path / "spaces").exists()
    stray = ["Musa B-PER I-PER" if ln.startswith("Musa") else ln for ln in sentence[:5]]
    path, res = _ner_train(tiny_base, tmp_path, ["Ali B-PER", "", *stray], "stray")
    assert res.exit_code == 2 and f"{path}:3: 3 fields" in res.output, res.output
    # a consistent CoNLL-2003 file: token POS chunk NER, the tag is the last column
    conll2003 = ["-DOCSTART- -X- -X- O", "", "Musa NNP B-NP B-PER", "ya VBD B-VP O", "tafi VB I-VP O",
                 "Kano NNP B-NP B-LOC", "", "Ali NNP B-NP B-PER", "yana VBZ B-VP O"]
    _, res = _ner_train(tiny_base, tmp_path, conll2003, "conll2003")
    assert res.exit_code == 0, res.output
    labels = json.loads((tmp_path / "conll2003" / "run.json").read_text(encoding="utf-8"))["labels"]
    assert labels == ["B-LOC", "B-PER", "I-LOC", "I-PER", "O"]


def test_pseudo_perplexity_on_few_sentences_warns(tiny_base, lang_adapter, text_splits, tmp_path):
    held_out = text_splits / "hau" / "test.txt"
    assert len(readers.read_text(held_out)) >= 30
    few = tmp_path / "few.txt"
    few.write_text("".join(ln + "\n" for ln in readers.read_text(held_out)[:5]), encoding="utf-8")
    res = invoke(["multilingual", "evaluate", lang_adapter, "--text", few, "--out", tmp_path / "ev_few"])
    assert res.exit_code == 0, res.output
    assert f"warning: {few}: pseudo-perplexity on 5 sentence(s) (fewer than 20; the file holds no more)" in res.output
    res = invoke(["multilingual", "evaluate", lang_adapter, "--text", held_out, "--max-sentences", 4,
                  "--out", tmp_path / "ev_cut"])
    assert res.exit_code == 0 and "on 4 sentence(s)" in res.output and "--max-sentences 4 kept 4 of" in res.output
    res = invoke(["multilingual", "evaluate", lang_adapter, "--text", held_out, "--max-sentences", 30,
                  "--out", tmp_path / "ev_ok"])
    assert res.exit_code == 0 and "warning" not in res.output, res.output
    res = invoke(["multilingual", "train-language-adapter", "--base", tiny_base, "--train",
                  text_splits / "hau" / "train.txt", "--eval", held_out, "--eval-sentences", 3, "--out",
                  tmp_path / "la", "--steps", 1, "--max-length", 48])
    assert res.exit_code == 0 and "--eval-sentences 3 kept 3 of" in res.output, res.output
    assert "on 3 sentence(s)" in json.loads((tmp_path / "la" / "run.json").read_text(encoding="utf-8"))["eval_warning"]


def _hau_topic(tmp_path):
    """A 40-example Hausa SIB-200 training split in its own folder, and the shipped dev split."""
    sib = DATA / "sib200" / "hau_Latn"
    train = tmp_path / "data" / "train.tsv"
    train.parent.mkdir()
    train.write_text("".join(ln + "\n" for ln in (sib / "train.tsv").read_text(encoding="utf-8").splitlines()[:41]),
                     encoding="utf-8")
    return train, sib / "dev.tsv"


def test_an_output_folder_that_is_an_input_or_a_run_given_twice_is_refused(tiny_base, tmp_path):
    train, dev = _hau_topic(tmp_path)
    base = tmp_path / "base"
    shutil.copytree(tiny_base, base)
    run = tmp_path / "run"
    res = invoke(["multilingual", "train-task", "--base", base, "--task", "topic", "--train", train, "--eval", dev,
                  "--out", run, "--steps", 1, *FAST])
    assert res.exit_code == 0, res.output
    before = (run / "run.json").read_bytes()
    # before: --overwrite replaced the trained run, the base or the data with the new output
    for args, lost in ((["evaluate", run, "--out", run], run / "run.json"),
                       (["evaluate", run, "--out", base], base / "config.json"),
                       (["train-task", "--base", base, "--task", "topic", "--train", train, "--eval", dev, "--out",
                         base, "--steps", 1, *FAST], base / "config.json"),
                       (["train-task", "--base", base, "--task", "topic", "--train", train, "--eval", dev, "--out",
                         train.parent, "--steps", 1, *FAST], train)):
        res = invoke(["multilingual", *args, "--overwrite"])
        assert res.exit_code == 2 and "which this command reads" in res.output, res.output
        assert lost.is_file(), args
    assert (run / "run.json").read_bytes() == before
    # before: one run given twice was one group of "2 seeds" (the same seed counted twice) in results.md
    res = invoke(["multilingual", "evaluate", run, f"{run}/", "--out", tmp_path / "ev"])
    assert res.exit_code == 2 and "this run is given twice" in res.output, res.output
    assert not (tmp_path / "ev").exists()


def test_an_evaluation_split_repeating_the_training_split_warns(tiny_base, lang_adapter, text_splits, tmp_path):
    train, dev = _hau_topic(tmp_path)
    res = invoke(["multilingual", "train-task", "--base", tiny_base, "--task", "topic", "--train", train, "--eval",
                  train, "--out", tmp_path / "same", "--steps", 1, *FAST])
    assert res.exit_code == 0, res.output
    assert f"warning: {train}: 100% of its examples are also in the training split {train}" in res.output
    assert json.loads((tmp_path / "same" / "run.json").read_text(encoding="utf-8"))["eval_overlap_with_train"] == 1.0
    res = invoke(["multilingual", "train-task", "--base", tiny_base, "--task", "topic", "--train", train, "--eval",
                  dev, "--out", tmp_path / "held_out", "--steps", 1, *FAST])
    assert res.exit_code == 0 and "also in the training split" not in res.output, res.output
    assert json.loads((tmp_path / "held_out" / "run.json").read_text(encoding="utf-8"))["eval_overlap_with_train"] == 0
    res = invoke(["multilingual", "evaluate", tmp_path / "held_out", "--eval", train, "--out", tmp_path / "ev"])
    assert res.exit_code == 0 and "100% of its examples are also in the training split" in res.output, res.output
    text = text_splits / "hau" / "train.txt"
    res = invoke(["multilingual", "evaluate", lang_adapter, "--text", text, "--max-sentences", 30,
                  "--out", tmp_path / "ev_la"])
    assert res.exit_code == 0 and f"warning: {text}: 100% of its examples are also in" in res.output, res.output
    res = invoke(["multilingual", "train-language-adapter", "--base", tiny_base, "--train", text, "--eval", text,
                  "--eval-sentences", 30, "--out", tmp_path / "la", "--steps", 1, "--max-length", 48])
    assert res.exit_code == 0 and f"warning: {text}: 100% of its examples" in res.output, res.output


def test_a_line_separator_inside_a_tweet_stays_in_its_row(tiny_base, tmp_path):
    lines = (DATA / "afrisenti" / "hau" / "train.tsv").read_text(encoding="utf-8").splitlines()
    rows = lines[:1] + lines[1::len(lines) // 39][:39]  # the file is sorted by label: every class
    rows[5] = rows[5].replace(" ", " \u2028", 1)  # LINE SEPARATOR, as tweets hold it
    rows[9] = rows[9].replace(" ", " \x85", 1)  # NEL
    rows[19] = rows[19].split("\t")[0]  # a row without its label, on line 20
    path = tmp_path / "train.tsv"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    args = ["multilingual", "train-task", "--base", tiny_base, "--task", "sentiment", "--train", path, "--eval", path,
            "--out", tmp_path / "run", "--steps", 1, *FAST]
    res = invoke(args)
    # before: line 6 was split in two at U+2028 ('expected 2 tab-separated fields, found 1' on a valid row)
    assert res.exit_code == 2 and f"{path}:20: expected 2 tab-separated fields, found 1" in res.output, res.output
    del rows[19]
    path.write_text("\r\n".join(rows) + "\r\n", encoding="utf-8")
    res = invoke(args)
    assert res.exit_code == 0, res.output
    assert len(readers.read_sentiment_tsv(path)) == 38


def test_a_labels_file_class_without_training_examples_warns(tiny_base, tmp_path):
    train, dev = _hau_topic(tmp_path)
    shipped = (DATA / "sib200" / "hau_Latn" / "labels.txt").read_text(encoding="utf-8")
    args = ["multilingual", "train-task", "--base", tiny_base, "--task", "topic", "--train", train, "--eval", dev,
            "--steps", 1, *FAST]
    (train.parent / "labels.txt").write_text("category\n" + shipped, encoding="utf-8")  # a header line
    res = invoke([*args, "--out", tmp_path / "header"])
    assert res.exit_code == 0, res.output
    # before: 'category' silently became an eighth class
    assert f"warning: {train.parent / 'labels.txt'}: class(es) ['category'] have no example in {train}" in res.output
    meta = json.loads((tmp_path / "header" / "run.json").read_text(encoding="utf-8"))
    assert meta["labels_without_training_examples"] == ["category"] and len(meta["labels"]) == 8
    (train.parent / "labels.txt").write_text(shipped, encoding="utf-8")
    res = invoke([*args, "--out", tmp_path / "shipped"])
    assert res.exit_code == 0 and "have no example" not in res.output, res.output
