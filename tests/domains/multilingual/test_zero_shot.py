"""MAD-X zero-shot transfer and the field's metrics, through the CLI: ``evaluate --lang-adapter`` really puts the
swapped language adapter under the run's task adapter (another adapter changes the scores, the very same folder
reproduces them), the rows name the adapter used and the evaluation language (``?`` without ``--eval-lang``), an
adapter of another base and a run with no language adapter in its stack are one-line errors that write nothing;
accuracy and weighted F1 beside macro-F1 equal scikit-learn's on the predictions, for models and baselines; a tiny
or one-class evaluation split gets a warning."""

from __future__ import annotations

import csv
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from adaptome.core.adapters import inject
from adaptome.domains.multilingual import readers

from .conftest import DATA, invoke

SIB_HAU, SIB_YOR = DATA / "sib200" / "hau_Latn", DATA / "sib200" / "yor_Latn"
SENTI = DATA / "afrisenti" / "hau"
FAST = ["--max-length", 48, "--batch-size", 16, "--lr", "1e-2", "--seeds", "1"]


def _task(base, out, *extra, task="topic", train=SIB_HAU / "train.tsv", dev=SIB_HAU / "dev.tsv", steps=2):
    res = invoke(["multilingual", "train-task", "--base", base, "--task", task, "--train", train, "--eval", dev,
                  "--out", out, "--steps", steps, *FAST, *extra])
    assert res.exit_code == 0, res.output
    return res


def _evaluate(out, *args):
    return invoke(["multilingual", "evaluate", *args, "--out", out])


def _rows(out):
    return list(csv.DictReader((out / "results.csv").open(encoding="utf-8")))


@pytest.fixture(scope="module")
def zero_shot(tiny_base, lang_adapter, text_splits, tmp_path_factory):
    """A topic task adapter trained on Hausa above la_hau, and a Yoruba language adapter of the same base."""
    out = tmp_path_factory.mktemp("ml_zero_shot")
    _task(tiny_base, out / "tc_hau", "--stack", lang_adapter, "--lang", "hau", steps=30)
    yor = text_splits / "yor"
    res = invoke(["multilingual", "train-language-adapter", "--base", tiny_base, "--method", "seq_bn",
                  "--option", "reduction_factor=2", "--train", yor / "train.txt", "--eval", yor / "test.txt",
                  "--lang", "yor", "--out", out / "la_yor", "--steps", 10, "--batch-size", 16, "--lr", "3e-2",
                  "--max-length", 48, "--eval-sentences", 5])
    assert res.exit_code == 0, res.output
    return out


def test_swapped_language_adapter_is_the_one_used_and_named(zero_shot, lang_adapter, tmp_path):
    from adaptome.domains.multilingual.task_train import load_task_run

    run, la_yor = zero_shot / "tc_hau", zero_shot / "la_yor"
    yor_dev = ["--eval", SIB_YOR / "dev.tsv", "--eval-lang", "yor"]
    results = {}
    for name, swap in (("own", []), ("same", ["--lang-adapter", lang_adapter]), ("yor", ["--lang-adapter", la_yor])):
        res = _evaluate(tmp_path / name, run, *yor_dev, *swap)
        assert res.exit_code == 0, res.output
        results[name] = _rows(tmp_path / name)
    model = {k: next(r for r in rows if r["run"] != "-") for k, rows in results.items()}
    scores = {k: tuple(r[m] for m in ("value", "accuracy", "weighted_f1")) for k, r in model.items()}
    # the very same folder swapped in reproduces the run's own numbers; another adapter changes them
    assert scores["same"] == scores["own"]
    assert scores["yor"] != scores["own"], scores
    # every row says which language it scored; the model row names the adapter actually used
    assert {r["language"] for rows in results.values() for r in rows} == {"yor"}
    assert model["own"]["adapter"] == "seq_bn[text]"
    assert model["own"]["lang_adapter"] == str(lang_adapter.resolve())
    assert model["yor"]["adapter"] == "seq_bn[text] swapped in: hau -> yor (la_yor)"
    assert model["yor"]["lang_adapter"] == str(la_yor.resolve())
    assert model["same"]["adapter"] == f"seq_bn[text] swapped in: hau -> hau ({lang_adapter.name})"
    assert "swapped in: hau -> yor (la_yor)" in (tmp_path / "yor" / "results.md").read_text(encoding="utf-8")
    # the baselines stay fitted on the run's (Hausa) training split, whichever adapter the model used
    baselines = {k: [(r["adapter"], r["train_split"], r["value"]) for r in rows if r["run"] == "-"]
                 for k, rows in results.items()}
    assert baselines["own"] == baselines["yor"] == baselines["same"]
    assert {b[1] for b in baselines["yor"]} == {str((SIB_HAU / "train.tsv").resolve())}
    # inside the reloaded model: lang0 holds la_yor's weights, the task adapter the run's own
    _, _, _, swapped = load_task_run(run, 1, la_yor)
    saved = load_file(str(la_yor / "adapter" / "adapter_model.safetensors"))
    inside = inject.adapter_state_dict(swapped, "lang0")
    assert inside.keys() == saved.keys() and all(torch.equal(inside[k], saved[k]) for k in saved)
    task_saved = load_file(str(run / "seed1" / "task_adapter" / "adapter_model.safetensors"))
    task_inside = inject.adapter_state_dict(swapped, "task")
    assert all(torch.equal(task_inside[k], task_saved[k]) for k in task_saved)


def test_row_language_is_the_eval_split_s(zero_shot, tmp_path):
    """Without --eval-lang a row on another split than the run's own says '?', not the run's --lang; on the run's
    own split it keeps the run's language; --eval-lang without --eval is refused."""
    run = zero_shot / "tc_hau"
    assert _evaluate(tmp_path / "other", run, "--eval", SIB_YOR / "dev.tsv").exit_code == 0
    assert {r["language"] for r in _rows(tmp_path / "other")} == {"?"}
    assert _evaluate(tmp_path / "own", run, "--eval", SIB_HAU / "dev.tsv").exit_code == 0
    assert {r["language"] for r in _rows(tmp_path / "own")} == {"hau"}
    res = _evaluate(tmp_path / "x", run, "--eval-lang", "yor")
    assert res.exit_code == 2 and "--eval-lang names the language of --eval" in res.output
    assert not (tmp_path / "x").exists()


def test_swap_refuses_another_base_and_a_run_without_language_adapter(zero_shot, tiny_base, tmp_path):
    run = zero_shot / "tc_hau"
    # an adapter whose recorded base fingerprint is another base's
    other = tmp_path / "la_other"
    shutil.copytree(zero_shot / "la_yor", other)
    meta_path = other / "adapter" / "adaptome.json"
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    meta["base_fingerprint"] = "sha256:" + "0" * 64
    meta_path.write_text(json.dumps(meta), encoding="utf-8")
    res = _evaluate(tmp_path / "ev", run, "--eval", SIB_YOR / "dev.tsv", "--lang-adapter", other)
    assert res.exit_code == 2, res.output
    errors = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and f"error: {other}: this language adapter was trained on the base" in errors[0]
    assert "cannot replace the run's language adapter" in errors[0] and "Traceback" not in res.output
    assert not (tmp_path / "ev").exists()
    # a task adapter alone has nothing to swap
    _task(tiny_base, tmp_path / "plain", steps=1)
    res = _evaluate(tmp_path / "ev", tmp_path / "plain", "--lang-adapter", zero_shot / "la_yor")
    assert res.exit_code == 2, res.output
    errors = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {tmp_path / 'plain'}: --lang-adapter replaces")
    assert "no language adapter in its stack" in errors[0]
    assert not (tmp_path / "ev").exists()
    # an existing results folder is left as it was
    assert _evaluate(tmp_path / "kept", run).exit_code == 0
    before = (tmp_path / "kept" / "results.csv").read_bytes()
    res = _evaluate(tmp_path / "kept", run, "--lang-adapter", other, "--overwrite")
    assert res.exit_code == 2 and (tmp_path / "kept" / "results.csv").read_bytes() == before


def test_accuracy_and_weighted_f1_match_sklearn_for_model_and_baselines(tiny_base, tmp_path):
    from sklearn.metrics import accuracy_score, f1_score

    train = readers.read_sentiment_tsv(SENTI / "train.tsv")[:300]
    dev = readers.read_sentiment_tsv(SENTI / "dev.tsv")[:60]
    readers.write_sentiment_tsv(tmp_path / "train.tsv", train)
    readers.write_sentiment_tsv(tmp_path / "dev.tsv", dev)
    _task(tiny_base, tmp_path / "run", task="sentiment", train=tmp_path / "train.tsv", dev=tmp_path / "dev.tsv",
          steps=8)
    res = _evaluate(tmp_path / "ev", tmp_path / "run")
    assert res.exit_code == 0, res.output
    rows = {r["adapter"]: r for r in _rows(tmp_path / "ev")}
    # the model: its reloaded predictions are the ones train-task wrote for this split
    pred = [ln.split("\t") for ln in (tmp_path / "run" / "seed1" / "predictions.tsv").read_text(
        encoding="utf-8").splitlines()[1:]]
    gold, got = [p[0] for p in pred], [p[1] for p in pred]
    expect = {"value": f1_score(gold, got, average="macro"), "accuracy": accuracy_score(gold, got),
              "weighted_f1": f1_score(gold, got, average="weighted")}
    for key, want in expect.items():
        assert float(rows["none"][key]) == pytest.approx(want, abs=1e-5), key
    run = json.loads((tmp_path / "run" / "run.json").read_text())["runs"][0]
    assert run["accuracy"] == pytest.approx(expect["accuracy"]) and run["weighted_f1"] == pytest.approx(
        expect["weighted_f1"])
    # the majority class by hand: the most frequent training label everywhere
    top = max(("negative", "neutral", "positive"), key=[e.label for e in train].count)
    gold = [e.label for e in dev]
    maj = rows["majority class"]
    assert float(maj["accuracy"]) == pytest.approx(gold.count(top) / len(gold), abs=1e-5)
    assert float(maj["weighted_f1"]) == pytest.approx(f1_score(gold, [top] * len(gold), average="weighted"), abs=1e-5)
    assert rows["char n-gram logreg"]["accuracy"] != ""
    table = (tmp_path / "ev" / "results.md").read_text(encoding="utf-8")
    assert "| accuracy (mean +- sd) | weighted F1 (mean +- sd) | mean +- sd | seeds |" in table
    assert f"{float(rows['none']['accuracy']):.4f} +- 0.0000" in table


def test_weighted_f1_counts_a_predicted_only_class_as_sklearn_does():
    from sklearn.metrics import f1_score

    from adaptome.domains.multilingual.metrics import weighted_f1

    gold = ["pos", "pos", "pos", "neg", "neg", "neu"]
    pred = ["pos", "neg", "other", "neg", "pos", "neu"]
    assert weighted_f1(gold, pred) == pytest.approx(f1_score(gold, pred, average="weighted"))


def test_tiny_or_one_class_evaluation_split_warns(tiny_base, tmp_path):
    from adaptome.domains.multilingual.metrics import MIN_EXAMPLES, split_warning

    dev = readers.read_sentiment_tsv(SENTI / "dev.tsv")
    readers.write_sentiment_tsv(tmp_path / "tiny.tsv", dev[:10])
    readers.write_sentiment_tsv(tmp_path / "one.tsv", [e for e in dev if e.label == "positive"][:30])
    readers.write_sentiment_tsv(tmp_path / "dev.tsv", dev[:60])
    train = dict(task="sentiment", train=SENTI / "train.tsv")
    res = _task(tiny_base, tmp_path / "run", dev=tmp_path / "tiny.tsv", **train)
    assert f"warning: {tmp_path / 'tiny.tsv'}: the evaluation split holds 10 examples (fewer than {MIN_EXAMPLES})" \
        in res.output
    res = _evaluate(tmp_path / "ev1", tmp_path / "run", "--eval", tmp_path / "one.tsv")
    assert res.exit_code == 0, res.output
    assert f"warning: {tmp_path / 'one.tsv'}: the evaluation split holds one class only ('positive'" in res.output
    assert (tmp_path / "ev1" / "results.csv").is_file()  # a warning, not an error
    res = _evaluate(tmp_path / "ev2", tmp_path / "run", "--eval", tmp_path / "dev.tsv")
    assert res.exit_code == 0 and "warning" not in res.output, res.output
    # NER: counted in sentences; a split without any entity says so
    sents = [readers.Sentence(["Ya", "je", "gida"], ["O", "O", "O"])] * 25
    assert "no entity" in split_warning("x.txt", "ner", sents) and "sentences" not in split_warning(
        "x.txt", "ner", sents)
    assert "5 sentences" in split_warning("x.txt", "ner", sents[:5])
