"""What a user meets on data the package never shipped, through the real CLI: a language adapter of another
base, or one retrained after the task run, is refused (never silently combined); options that would not act on
the run are refused; runs reload from another directory; evaluate keeps runs and splits apart; long NER
sentences are scored whole (word windows), with an explicit subword example; BOM / CRLF / blank-line files read
like clean ones; a one-class training split is an error; a failed run destroys nothing already written."""

from __future__ import annotations

import csv
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from adaptome.domains.multilingual import readers
from adaptome.domains.multilingual.base import train_tokenizer
from adaptome.domains.multilingual.tasks import IGNORE

from .conftest import DATA, invoke

SENTI = DATA / "afrisenti" / "hau"
FAST = ["--max-length", 48, "--batch-size", 8, "--lr", "1e-2", "--seeds", "1"]


def _train(base, out, *extra, task="sentiment", train=SENTI / "train.tsv", dev=SENTI / "dev.tsv", steps=3):
    return invoke(["multilingual", "train-task", "--base", base, "--task", task, "--train", train, "--eval", dev,
                   "--out", out, "--steps", steps, *FAST, *extra])


def _small_sentiment(tmp_path, n=60):
    """The first ``n`` tweets of each class of the shipped Hausa AfriSenti training split."""
    rows = readers.read_sentiment_tsv(SENTI / "train.tsv")
    keep = [e for lab in ("negative", "neutral", "positive") for e in [r for r in rows if r.label == lab][:n]]
    readers.write_sentiment_tsv(tmp_path / "train.tsv", keep)
    readers.write_sentiment_tsv(tmp_path / "dev.tsv", readers.read_sentiment_tsv(SENTI / "dev.tsv")[:90])
    return tmp_path / "train.tsv", tmp_path / "dev.tsv"


def test_language_adapter_of_another_base_is_refused(tiny_base, lang_adapter, text_splits, tmp_path):
    """Same architecture and sizes, other weights (a base re-pretrained in place): the shapes fit, the adapter
    does not belong."""
    other = tmp_path / "other_base"
    shutil.copytree(tiny_base, other)
    hau = text_splits / "hau"
    res = invoke(["multilingual", "train-language-adapter", "--base", other, "--train", hau / "train.txt",
                  "--eval", hau / "test.txt", "--out", tmp_path / "la_other", "--steps", 2, "--max-length", 48,
                  "--eval-sentences", 5])
    assert res.exit_code == 0, res.output
    weights = load_file(str(other / "model.safetensors"))
    torch.manual_seed(0)
    save_file({k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v for k, v in weights.items()},
              str(other / "model.safetensors"))
    tr, dv = _small_sentiment(tmp_path)
    for base, la in ((other, lang_adapter), (other, tmp_path / "la_other")):
        res = _train(base, tmp_path / "run", "--stack", la, train=tr, dev=dv)
        assert res.exit_code == 2, res.output
        assert "was trained on the base" in res.output and "Traceback" not in res.output
        assert not (tmp_path / "run").exists()
    res = invoke(["multilingual", "evaluate", tmp_path / "la_other", "--text", hau / "test.txt", "--out",
                  tmp_path / "ev"])
    assert res.exit_code == 2 and "changed since the adapter was trained" in res.output, res.output
    # on its own base it stacks; the fingerprint is the content: la_other was trained on a byte-for-byte copy
    assert _train(tiny_base, tmp_path / "ok", "--stack", lang_adapter, train=tr, dev=dv).exit_code == 0
    assert _train(tiny_base, tmp_path / "ok2", "--stack", tmp_path / "la_other", train=tr, dev=dv).exit_code == 0


def test_retrained_language_adapter_is_refused_at_reload_and_runs_reload_from_anywhere(
        tiny_base, lang_adapter, text_splits, tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    shutil.copytree(lang_adapter, work / "la")
    tr, dv = _small_sentiment(work)
    monkeypatch.chdir(work)  # relative paths, as a user types them
    res = _train(tiny_base, "run", "--stack", "la", "--lang", "kin", train="train.tsv", dev="dev.tsv", steps=10)
    assert res.exit_code == 0, res.output
    assert "warning: --lang kin, but the language adapter la was trained for 'hau'" in res.output
    trained = json.loads((work / "run" / "run.json").read_text())["runs"][0]["macro_f1"]
    # evaluate from another directory reloads the same adapters and reproduces the training-time score
    monkeypatch.chdir(tmp_path)
    res = invoke(["multilingual", "evaluate", work / "run", "--out", tmp_path / "ev"])
    assert res.exit_code == 0, res.output
    row = next(r for r in csv.DictReader((tmp_path / "ev" / "results.csv").open()) if r["run"] != "-")
    assert float(row["value"]) == pytest.approx(trained, abs=1e-5)
    # the language adapter is retrained in place: the task run no longer matches it
    res = invoke(["multilingual", "train-language-adapter", "--base", tiny_base, "--method", "seq_bn",
                  "--option", "reduction_factor=2", "--train", text_splits / "hau" / "train.txt",
                  "--eval", text_splits / "hau" / "test.txt", "--out", work / "la", "--overwrite", "--steps", 3,
                  "--max-length", 48, "--eval-sentences", 5, "--seed", 7])
    assert res.exit_code == 0, res.output
    res = invoke(["multilingual", "evaluate", work / "run", "--out", tmp_path / "ev2"])
    assert res.exit_code == 2 and "language adapter" in res.output and "changed since" in res.output, res.output
    assert not (tmp_path / "ev2").exists()
    # a run without a language adapter, whose training split is edited afterwards: the baselines would be
    # fitted on other data than the run, so evaluate refuses
    res = _train(tiny_base, work / "plain", train=tr, dev=dv, steps=2)
    assert res.exit_code == 0, res.output
    with open(tr, "a", encoding="utf-8") as fh:
        fh.write("sabon misali\tpositive\n")
    res = invoke(["multilingual", "evaluate", work / "plain", "--out", tmp_path / "ev3"])
    assert res.exit_code == 2 and "training split" in res.output and "changed since" in res.output, res.output


def test_options_that_would_not_act_are_refused(tiny_base, tmp_path):
    tr, dv = _small_sentiment(tmp_path)
    ner = DATA / "masakhaner2" / "hau" / "dev.txt"
    cases = [
        (["--task-method", "lora_native", "--reduction-factor", 8], {}, "--reduction-factor applies"),
        (["--full", "--reduction-factor", 8], {}, "--reduction-factor applies"),
        (["--full", "--task-method", "lora_native"], {}, "exclude each other"),
        (["--label-mode", "all"], {}, "--label-mode applies to the ner task"),
        (["--pooling", "cls"], dict(task="ner", train=ner, dev=ner), "--pooling applies"),
        (["--label-mode", "last"], dict(task="ner", train=ner, dev=ner), "label mode must be 'first' or 'all'"),
        (["--pooling", "max"], {}, "pooling must be 'mean' or 'cls'"),
    ]
    for extra, kw, msg in cases:
        res = _train(tiny_base, tmp_path / "x", *extra, **{"train": tr, "dev": dv, "steps": 1, **kw})
        assert res.exit_code == 2 and msg in res.output and "Traceback" not in res.output, (extra, res.output)
        assert not (tmp_path / "x").exists()
    # given where they act, they are recorded
    res = _train(tiny_base, tmp_path / "lora", "--task-method", "lora_native", train=tr, dev=dv, steps=1)
    assert res.exit_code == 0, res.output
    cfg = json.loads((tmp_path / "lora" / "run.json").read_text())["config"]
    assert cfg["task_method"] == "lora_native" and cfg["task_options"] == {}
    res = _train(tiny_base, tmp_path / "rf", "--reduction-factor", 4, "--pooling", "cls", train=tr, dev=dv, steps=1)
    assert res.exit_code == 0, res.output
    cfg = json.loads((tmp_path / "rf" / "run.json").read_text())["config"]
    assert cfg["task_options"] == {"reduction_factor": 4} and cfg["pooling"] == "cls"


def test_evaluate_keeps_runs_with_the_same_setup_name_and_splits_apart(tiny_base, tmp_path):
    tr, dv = _small_sentiment(tmp_path)
    dv2 = tmp_path / "dev2.tsv"
    readers.write_sentiment_tsv(dv2, readers.read_sentiment_tsv(SENTI / "dev.tsv")[90:180])
    for name, extra, dev in (("rf2", ["--reduction-factor", 2], dv), ("rf4", ["--reduction-factor", 4], dv),
                             ("rf2b", ["--reduction-factor", 2], dv2)):
        assert _train(tiny_base, tmp_path / name, *extra, train=tr, dev=dev, steps=4).exit_code == 0
    res = invoke(["multilingual", "evaluate", tmp_path / "rf2", tmp_path / "rf4", tmp_path / "rf2b",
                  "--out", tmp_path / "ev"])
    assert res.exit_code == 0, res.output
    table = (tmp_path / "ev" / "results.md").read_text().splitlines()[2:]
    # the three runs are all "none" (no language adapter): still three rows of one seed each, each its own score
    for name in ("rf2", "rf4", "rf2b"):
        row = [ln for ln in table if ln.startswith(f"| {name} |")]
        value = json.loads((tmp_path / name / "run.json").read_text())["runs"][0]["macro_f1"]
        assert len(row) == 1 and f"| {value:.4f} +- 0.0000 | 1 |" in row[0], (name, table)
    # baselines once per split, not averaged across the two splits
    majority = [ln for ln in table if "majority class" in ln]
    assert len(majority) == 2 and {ln.split(" | ")[3] for ln in majority} == {"dev.tsv", "dev2.tsv"}
    res = invoke(["multilingual", "evaluate", tmp_path / "nowhere", "--out", tmp_path / "ev3"])
    assert res.exit_code == 2 and "neither a train-task run nor a language adapter" in res.output


def test_evaluate_fits_one_baseline_per_training_split_and_names_it(tiny_base, tmp_path):
    """Two runs on one dev file but different training files get a baseline pair each (never averaged into
    one row of "2 seeds"); a third run on the first training file shares its pair; every row names its split."""
    from adaptome.domains.multilingual.evaluate import majority_baseline, ngram_baseline

    tr, dv = _small_sentiment(tmp_path)
    skew = tmp_path / "skew.tsv"
    full = readers.read_sentiment_tsv(tr)
    readers.write_sentiment_tsv(skew, [e for lab, n in (("negative", 60), ("neutral", 4), ("positive", 4))
                                       for e in [r for r in full if r.label == lab][:n]])
    for name, train in (("a", tr), ("b", skew), ("c", tr)):
        assert _train(tiny_base, tmp_path / name, train=train, dev=dv, steps=2).exit_code == 0
    res = invoke(["multilingual", "evaluate", tmp_path / "a", tmp_path / "b", tmp_path / "c", "--out", tmp_path / "ev"])
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader((tmp_path / "ev" / "results.csv").open()))
    dev = readers.read_sentiment_tsv(dv)
    for adapter, fn in (("majority class", majority_baseline), ("char n-gram logreg", ngram_baseline)):
        got = {r["train_split"]: float(r["value"]) for r in rows if r["adapter"] == adapter}
        assert len([r for r in rows if r["adapter"] == adapter]) == 2
        assert got == {str(f.resolve()): pytest.approx(fn("sentiment", readers.read_sentiment_tsv(f), dev), abs=1e-5)
                       for f in (tr, skew)}, adapter
    assert {r["run"].rsplit("/", 1)[-1]: r["train_split"] for r in rows if r["run"] != "-"} == {
        "a": str(tr.resolve()), "b": str(skew.resolve()), "c": str(tr.resolve())}
    table = (tmp_path / "ev" / "results.md").read_text().splitlines()
    assert "| data source | train split | metric |" in table[0]
    for adapter in ("majority class", "char n-gram logreg"):
        lines = [ln for ln in table if f"| {adapter} |" in ln]
        assert sorted(ln.split(" | ")[7] for ln in lines) == ["skew.tsv", "train.tsv"], table
        assert all(ln.endswith("| 1 |") for ln in lines), table
    for name, train in (("a", "train.tsv"), ("b", "skew.tsv"), ("c", "train.tsv")):
        assert [ln.split(" | ")[7] for ln in table if ln.startswith(f"| {name} |")] == [train], table


def test_word_windows():
    from adaptome.domains.multilingual.tasks import word_windows

    assert word_windows([3, 3, 3, 3], 6) == [(0, 2), (2, 4)]
    assert word_windows([1, 9, 1], 4) == [(0, 1), (1, 2), (2, 3)]  # a word over budget stands alone
    assert word_windows([2, 2, 2], 100) == [(0, 3)]
    assert word_windows([], 5) == []


def test_long_ner_sentence_is_split_into_word_windows_with_first_subword_labels(tmp_path):
    """An explicit example: 9 words, several of which split into subwords, under a 12-token limit."""
    from adaptome.domains.multilingual.tasks import TokenDataset

    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(["ya je Kano da Abuja"] * 50 + ["ta yi aiki a gida"] * 50) + "\n",
                      encoding="utf-8")
    tok = train_tokenizer([corpus], "xlm-roberta", vocab_size=60, max_length=64)
    words = ["Musa", "Kwankwasiyya", "ya", "je", "Kano", "da", "Abdulmumini", "Zubairu", "jiya"]
    tags = ["B-PER", "I-PER", "O", "O", "B-LOC", "O", "B-PER", "I-PER", "B-DATE"]
    labels = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-DATE", "I-DATE"]
    l2i = {lab: i for i, lab in enumerate(labels)}
    pieces = [len(tok(w, add_special_tokens=False)["input_ids"]) for w in words]
    assert sum(pieces) > 10 and max(pieces) >= 3, pieces  # the sentence does not fit 12 tokens, words split
    data = TokenDataset([readers.Sentence(words, tags)], tok, l2i, max_length=12)
    assert len(data) >= 2
    covered = []
    for item in data.items:
        assert len(item["input_ids"]) <= 12
        window = words[item["offset"]:item["offset"] + item["n_words"]]
        covered += window
        # the first subword of each word carries the word's tag, the others and the specials are ignored
        firsts = [k for k, w in enumerate(item["word_ids"]) if w is not None and item["word_ids"][k - 1] != w]
        assert [item["labels"][k] for k in firsts] == [l2i[t] for t in tags[item["offset"]:][:item["n_words"]]]
        assert all(item["labels"][k] == IGNORE for k in range(len(item["labels"])) if k not in firsts)
    assert covered == words  # every word in exactly one window, in order
    # predictions equal to the labels (ignored positions predicted as a wrong tag) map back to the gold tags
    wrong = l2i["B-LOC"]
    preds = [[x if x != IGNORE else wrong for x in item["labels"]] for item in data.items]
    got, missing = data.sentence_tags(preds, dict(enumerate(labels)))
    assert got == [tags] and missing == 0


def test_ner_run_scores_every_word_of_long_sentences(tiny_base, tmp_path):
    sents = readers.read_conll(DATA / "masakhaner2" / "hau" / "dev.txt")[:40]
    readers.write_conll(tmp_path / "ner.txt", sents)
    res = _train(tiny_base, tmp_path / "ner", "--max-length", 16, task="ner", train=tmp_path / "ner.txt",
                 dev=tmp_path / "ner.txt", steps=2)
    assert res.exit_code == 0, res.output
    run = json.loads((tmp_path / "ner" / "run.json").read_text())
    assert run["runs"][0]["truncated_words"] == 0
    pred = readers.read_conll(tmp_path / "ner" / "seed1" / "predictions.tsv")
    assert [s.words for s in pred] == [s.words for s in sents]


def test_bom_crlf_and_blank_lines_read_like_clean_files(tmp_path):
    clean = "tweet\tlabel\nIna son shi\tpositive\nBa kyau\tnegative\n"
    messy = "\ufeff" + clean.replace("\n", "\r\n").replace("positive\r\n", "positive\r\n\r\n")
    (tmp_path / "clean.tsv").write_text(clean, encoding="utf-8")
    (tmp_path / "messy.tsv").write_bytes(messy.encode("utf-8"))
    a, b = (readers.read_sentiment_tsv(tmp_path / n) for n in ("clean.tsv", "messy.tsv"))
    assert [(e.text, e.label) for e in a] == [(e.text, e.label) for e in b]
    conll = "Kano B-LOC\nna O\n\nMusa B-PER\n"
    (tmp_path / "c.txt").write_bytes(("\ufeff" + conll.replace("\n", "\r\n")).encode("utf-8"))
    sents = readers.read_conll(tmp_path / "c.txt")
    assert [s.words for s in sents] == [["Kano", "na"], ["Musa"]] and sents[1].lines == [4]
    raw = tmp_path / "raw.txt"
    raw.write_bytes("\ufeffSannu da zuwa\r\n\r\nIna kwana\r\n".encode("utf-8"))
    assert readers.read_text(raw) == ["Sannu da zuwa", "Ina kwana"]


@pytest.mark.parametrize("arch", ["xlm-roberta", "bert"])
def test_bom_crlf_text_gives_the_tokenizer_of_the_lf_file(arch, tmp_path):
    """pretrain-tiny-base learns its tokenizer from the lines as read (no '\ufeff' or '\r' entries). The trainer
    numbers (and, for Unigram, scores) entries differently from run to run even on one file, and WordPiece breaks ties
    at its size limit differently: the entries compared, nearly all shared."""
    lines = (DATA / "text" / "hau.txt").read_text(encoding="utf-8").splitlines()[:400]
    (tmp_path / "lf.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (tmp_path / "bom.txt").write_bytes(("\ufeff" + "\r\n".join(lines) + "\r\n\r\n").encode("utf-8"))
    vocab = {}
    for name in ("lf", "bom"):
        res = invoke(["multilingual", "pretrain-tiny-base", tmp_path / f"{name}.txt",
                      "--out", tmp_path / f"base_{name}", "--arch", arch, "--vocab-size", 500, "--hidden-size", 32,
                      "--layers", 1, "--max-length", 48, "--steps", 1, "--batch-size", 8])
        assert res.exit_code == 0, res.output
        model = json.loads((tmp_path / f"base_{name}" / "tokenizer.json").read_text(encoding="utf-8"))["model"]
        vocab[name] = {e[0] for e in model["vocab"]} if isinstance(model["vocab"], list) else set(model["vocab"])
    assert not {"\r", "\ufeff", "\n"} & (vocab["bom"] | vocab["lf"])
    # the same lines train both; the trainer breaks ties at its size limit differently from run to run
    overlap = len(vocab["bom"] & vocab["lf"]) / len(vocab["bom"] | vocab["lf"])
    assert overlap > 0.95, overlap


def test_one_class_training_split_and_bad_eval_file_destroy_nothing(tiny_base, tmp_path):
    tr, dv = _small_sentiment(tmp_path)
    assert _train(tiny_base, tmp_path / "run", train=tr, dev=dv, steps=1).exit_code == 0
    before = (tmp_path / "run" / "run.json").read_bytes()
    one = tmp_path / "one.tsv"
    readers.write_sentiment_tsv(one, [e for e in readers.read_sentiment_tsv(tr) if e.label == "neutral"])
    res = _train(tiny_base, tmp_path / "run", "--overwrite", train=one, dev=dv, steps=1)
    assert res.exit_code == 2 and "one.tsv: every training example has the label 'neutral'" in res.output
    bad = tmp_path / "bad.tsv"
    bad.write_text("tweet\tlabel\nok\tpositive\nextra\tcolumn\there\n", encoding="utf-8")
    res = _train(tiny_base, tmp_path / "run", "--overwrite", train=tr, dev=bad, steps=1)
    assert res.exit_code == 2 and "bad.tsv:3: expected 2 tab-separated fields, found 3" in res.output
    assert (tmp_path / "run" / "run.json").read_bytes() == before


def test_task_option_sets_the_task_adapters_rank_and_an_option_the_method_lacks_is_refused(tiny_base, tmp_path):
    """``--task-option r=4`` reaches the LoRA task adapter (its saved factors have rank 4, not the default 8);
    an option the method does not have, or one given twice, is refused before anything is written."""
    tr, dv = _small_sentiment(tmp_path, n=20)
    res = _train(tiny_base, tmp_path / "lora4", "--task-method", "lora_native", "--task-option", "r=4",
                 "--task-option", "lora_alpha=8", train=tr, dev=dv, steps=1)
    assert res.exit_code == 0, res.output
    cfg = json.loads((tmp_path / "lora4" / "run.json").read_text())["config"]
    assert cfg["task_options"] == {"r": 4, "lora_alpha": 8}
    shapes = {tuple(t.shape) for f in (tmp_path / "lora4").rglob("*.safetensors")
              for k, t in load_file(f).items() if "lora_A" in k}
    assert shapes and {s[0] for s in shapes} == {4}, shapes
    for extra, msg in ((["--task-option", "r=4"], "adapter[seq_bn].r' (known: "),
                       (["--reduction-factor", 4, "--task-option", "reduction_factor=8"], "both given"),
                       (["--full", "--task-option", "r=4"], "exclude each other"),
                       (["--task-option", "r"], "expected key=value")):
        res = _train(tiny_base, tmp_path / "bad", *extra, train=tr, dev=dv, steps=1)
        assert res.exit_code == 2 and msg in res.output and "Traceback" not in res.output, (extra, res.output)
        assert not (tmp_path / "bad").exists()
