"""The label classifiers against scores computed by hand, malformed answers counted as such, and
``classify`` printing the majority class and the 3-mer baseline on the same sequences."""

import csv
import math

import pytest
import torch
from typer.testing import CliRunner

from adaptome.domains.protein import classify, data, formats, sample
from adaptome.domains.protein.cli import app
from adaptome.domains.protein.kmer import KmerClassifier
from adaptome.domains.protein.tokenizer import encode

runner = CliRunner()
TASK = data.FAMILY
LONG = ("MKTAYIAKQRQISFVKSHFSRQ" * 10)[:200]
SHORT = "MKRVLA"


def _logprob(model, tok, prompt: str, target: str, eos: bool) -> float:
    """sum_t log p(target_t | <s> prompt, target_<t), one unpadded forward pass, position by position."""
    ids = encode(tok, prompt) + encode(tok, target, bos=False) + ([tok.eos_token_id] if eos else [])
    n_src = len(encode(tok, prompt))
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0]  # (L, V)
    return sum(torch.log_softmax(logits[t - 1], -1)[ids[t]].item() for t in range(n_src, len(ids)))


def _normalised(row: dict) -> dict:
    lse = math.log(sum(math.exp(v) for v in row.values()))
    return {c: v - lse for c, v in row.items()}


def test_determine_bayes_combined_match_hand_computed_scores(tiny):
    model, tok = tiny
    cands, limit = ["A", "Bcd"], 80
    # crops by hand (character tokenizer): the widest candidate is "Bcd"
    k_det = limit - 1 - len("[Determine family] Seq=<") - len(">") - len("Family=<Bcd>") - 1
    k_gen = limit - 1 - len("[Generate by family] Family=<Bcd>") - len("Seq=<")
    hand = {"determine": [], "bayes": []}
    for s in (SHORT, LONG):
        q = s if s == SHORT else s[:k_det]
        hand["determine"].append({c: _logprob(model, tok, f"[Determine family] Seq=<{q}>", f"Family=<{c}>", True)
                                  for c in cands})
        target, eos = (f"Seq=<{s}>", True) if s == SHORT else (f"Seq=<{s[:k_gen]}", False)  # open crop: no </s>
        hand["bayes"].append({c: _logprob(model, tok, f"[Generate by family] Family=<{c}>", target, eos)
                              for c in cands})
    hand["combined"] = [{c: _normalised(d)[c] + _normalised(b)[c] for c in cands}
                        for d, b in zip(hand["determine"], hand["bayes"])]
    for method in ("determine", "bayes", "combined"):
        got = classify.classify(model, tok, TASK, [SHORT, LONG], cands, method, batch_size=3, max_seq_length=limit)
        for g, h in zip(got, hand[method]):
            assert g["scores"] == pytest.approx(h, abs=1e-4), method
            assert g["pred"] == max(h, key=h.get) and g["status"] == "ok"
    # without a limit nothing is cropped: the long query is scored whole
    got = classify.classify(model, tok, TASK, [LONG], cands, "determine", max_seq_length=None)
    assert got[0]["scores"]["A"] == pytest.approx(
        _logprob(model, tok, f"[Determine family] Seq=<{LONG}>", "Family=<A>", True), abs=1e-4)
    assert classify.DEFAULT_METHOD in classify.METHODS


def test_a_malformed_generated_answer_is_counted_as_malformed_not_as_a_label(tiny, monkeypatch):
    model, tok = tiny
    texts = ["Family=<A>", "Pki=<", "Family=<Zzz>", "Family=<A", "Family=<>", "Seq=<MKV>", "Family=<Cycli=<CS>"]
    monkeypatch.setattr(sample, "generate_continuations", lambda m, t, prompts, params, progress=False:
                        [(x, len(x)) for x in texts[:len(prompts)]])
    got = classify.classify(model, tok, TASK, [SHORT] * 7, ["A", "B"], "generate")
    assert [(g["pred"], g["status"]) for g in got] == [
        ("A", "ok"), (None, "malformed"), ("Zzz", "unknown_label"), (None, "malformed"), (None, "malformed"),
        (None, "malformed"), (None, "malformed")]
    train = [formats.Record(f"t{i}", s, lab) for i, (s, lab) in enumerate(
        [("MKVLA", "A"), ("MKVLL", "A"), ("WWPCH", "B")])]
    rep = classify.with_baselines(train, [SHORT] * 7, got, ["A", "B", "A", "A", "A", "B", "A"])
    assert rep["n_malformed"] == 5 and rep["n_unknown_label"] == 1
    assert rep["model_accuracy"] == pytest.approx(1 / 7)  # only the first answer counts as right
    # the real decoding path on the random tiny model: every answer gets one of the three statuses
    monkeypatch.undo()
    real = classify.classify(model, tok, TASK, [SHORT, LONG], ["A", "B"], "generate", max_seq_length=80)
    for g in real:
        assert g["status"] in ("ok", "unknown_label", "malformed")
        assert (g["pred"] is None) == (g["status"] == "malformed")


@pytest.fixture
def saved_tiny(tiny, tmp_path):
    model, tok = tiny
    model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    return tmp_path / "model"


def test_classify_cli_prints_majority_and_kmer_on_the_same_sequences(saved_tiny, tmp_path, monkeypatch):
    pfam = data.data_dir() / "pfam"
    train = [pfam / "pfam6.seed.txt", pfam / "pfam4.seed.txt"]  # COX2_TM x 11, 3Beta_HSD x 8 (Stockholm)
    cox = formats.read_stockholm(train[0]).records
    hsd = formats.read_stockholm(train[1]).records
    queries = cox[:3] + hsd[:2]
    formats.write_fasta(((f"{r.id} Family=<{r.label}>", r.seq) for r in queries), tmp_path / "q.fa")
    args = ["classify", "--model", str(saved_tiny), "--fasta", str(tmp_path / "q.fa"), "--task-name", "family",
            "--train", str(train[0]), "--train", str(train[1])]
    r = runner.invoke(app, args + ["--out", str(tmp_path / "p.csv")])
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader((tmp_path / "p.csv").open()))
    assert [row["id"] for row in rows] == [q.id for q in queries]
    model_acc = sum(row["prediction"] == row["label"] for row in rows) / 5
    km = KmerClassifier(3).fit([x.seq for x in cox + hsd], [x.label for x in cox + hsd]).predict(
        [q.seq for q in queries])
    kmer_acc = sum(p == q.label for p, q in zip(km, queries)) / 5
    assert [row["kmer_prediction"] for row in rows] == km
    assert f"accuracy on 5 sequences: model ({classify.DEFAULT_METHOD}) {model_acc:.3f}" in r.output
    assert "majority class (COX2_TM) 0.600" in r.output  # 11 of 19 training sequences; 3 of 5 queries
    assert f"3-mer logistic regression {kmer_acc:.3f}" in r.output
    assert "fitted on 19 labelled training sequences, 2 classes" in r.output
    assert "warning: 5 query sequence(s) also occur in --train: not held out" in r.output
    # queries without labels: the majority class and the agreement with the baseline, still printed
    formats.write_fasta(((q.id, q.seq) for q in queries), tmp_path / "u.fa")
    r = runner.invoke(app, args[:4] + [str(tmp_path / "u.fa")] + args[5:] + ["--out", str(tmp_path / "u.csv")])
    assert r.exit_code == 0, r.output
    assert "majority class of the training set: COX2_TM" in r.output and "3-mer logistic regression on" in r.output
    # generate: malformed answers counted apart in the printed report and marked in the CSV
    monkeypatch.setattr(sample, "generate_continuations", lambda m, t, prompts, params, progress=False:
                        [("Pki=<", 5), ("Family=<COX2_TM>", 16), ("Family=<Pkinase>", 16),
                         ("Family=<3Beta_HSD>", 18), ("Family=<COX2", 12)][:len(prompts)])
    r = runner.invoke(app, args + ["--method", "generate", "--out", str(tmp_path / "g.csv")])
    assert r.exit_code == 0, r.output
    assert "malformed answers: 2; well-formed labels outside the candidates: 1" in r.output
    assert "model (generate) 0.400" in r.output  # the second (COX2_TM) and fourth (3Beta_HSD) are right
    status = [row["status"] for row in csv.DictReader((tmp_path / "g.csv").open())]
    assert status == ["malformed", "ok", "unknown_label", "ok", "malformed"]
    # without --train there is no baseline: refused, nothing written
    r = runner.invoke(app, args[:7] + ["--out", str(tmp_path / "n.csv")])
    assert r.exit_code == 2 and "give --train" in r.output and not (tmp_path / "n.csv").exists()
