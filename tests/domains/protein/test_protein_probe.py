"""The linear probe: pooled hidden states against a forward pass by hand, families told apart from what the
embeddings hold, its choices made on the training sequences only, and ``classify --method probe``."""

import csv
import random

import pytest
import torch
from typer.testing import CliRunner

from adaptome.domains.protein import classify, data, formats, probe
from adaptome.domains.protein.cli import app
from adaptome.domains.protein.formats import ProteinError, Record
from adaptome.domains.protein.tokenizer import encode

TASK = data.FAMILY


def _by_hand(model, tok, seq: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(last, all) mean hidden state over the tokens after ``Seq=<``, one unpadded sequence."""
    ids = encode(tok, f"[Determine family] Seq=<{seq}>")
    a = len(encode(tok, "[Determine family] Seq=<"))
    with torch.no_grad():
        hs = model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states  # each (1, L, H)
    pooled = [h[0, a:].mean(0) for h in hs]  # each (H,)
    return pooled[-1], torch.cat(pooled)


def test_embed_is_the_mean_hidden_state_over_the_residues_padding_and_crop_included(tiny):
    model, tok = tiny
    seqs = ["MKRVLA", "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQ", "WW"]
    got = probe.embed(model, tok, TASK, seqs, "Bcd", None, batch_size=2)  # a padded batch and a single one
    assert got["last"].shape == (3, 32) and got["all"].shape == (3, 32 * 2)  # 1 layer: embeddings + layer
    for i, s in enumerate(seqs):
        last, every = _by_hand(model, tok, s)
        assert torch.tensor(got["last"][i]) == pytest.approx(last, abs=1e-5)
        assert torch.tensor(got["all"][i]) == pytest.approx(every, abs=1e-5)
    # a token limit crops the query exactly as the determine records were cropped (widest label "Bcd")
    limit = 40
    k = limit - 1 - len("[Determine family] Seq=<") - len(">") - len("Family=<Bcd>") - 1
    got = probe.embed(model, tok, TASK, [seqs[1]], "Bcd", limit)
    assert torch.tensor(got["last"][0]) == pytest.approx(_by_hand(model, tok, seqs[1][:k])[0], abs=1e-5)


def _families(n: int, seed: int) -> list[Record]:
    """Two synthetic families told apart by composition only (hydrophobic vs charged residues)."""
    rng = random.Random(seed)
    out = []
    for label, letters in (("Hyd", "AILMFVW"), ("Chg", "DEKRHQN")):
        for i in range(n):
            seq = "".join(rng.choice(letters) if rng.random() < 0.7 else rng.choice("GPSTCY") for _ in range(40))
            out.append(Record(f"{label}{i}", seq, label))
    return out


def test_the_probe_learns_families_from_the_embeddings_choosing_on_training_sequences_only(tiny, monkeypatch):
    model, tok = tiny  # random weights: the mean-pooled embeddings still carry the composition
    train, test = _families(10, 0), _families(6, 1)
    seen = []
    real_embed = probe.embed
    monkeypatch.setattr(probe, "embed", lambda m, t, task, seqs, *a, **k: seen.append(list(seqs))
                        or real_embed(m, t, task, seqs, *a, **k))
    fit = probe.fit_probe(model, tok, TASK, [r.seq for r in train], [r.label for r in train], ["Chg", "Hyd"], None)
    assert seen == [[r.seq for r in train]]  # cross-validation saw the training sequences and nothing else
    grid = probe.ProbeConfig()
    assert len(fit.cv_accuracy) == len(grid.layers) * len(grid.cs)
    assert fit.cv_accuracy[f"{fit.layers} C={fit.c:g}"] == max(fit.cv_accuracy.values())
    preds = classify.classify(model, tok, TASK, [r.seq for r in test], ["Chg", "Hyd"], "probe", train=train,
                              max_seq_length=None)
    acc = sum(p["pred"] == r.label for p, r in zip(preds, test)) / len(test)
    assert acc >= 0.9  # majority class: 0.5
    # the scores are the probe's log-probabilities: they normalise over the candidates
    assert sum(torch.tensor(list(p["scores"].values())).exp().sum().item() for p in preds) == pytest.approx(len(test))
    assert preds[0]["probe"]["layers"] == fit.layers and preds[0]["probe"]["C"] == fit.c
    # a candidate without training examples cannot be named by a linear probe: -inf, never predicted
    more = classify.classify(model, tok, TASK, [test[0].seq], ["Chg", "Hyd", "New"], "probe", train=train,
                             max_seq_length=None)
    assert more[0]["scores"]["New"] == float("-inf") and more[0]["pred"] != "New"


def test_the_probe_refuses_without_labelled_training_sequences(tiny):
    model, tok = tiny
    with pytest.raises(ProteinError, match="needs labelled training sequences"):
        classify.classify(model, tok, TASK, ["MKV"], ["A", "B"], "probe")
    with pytest.raises(ProteinError, match="at least 2 training sequences per class"):
        classify.classify(model, tok, TASK, ["MKV"], ["A", "B"], "probe",
                          train=[Record("a1", "MKV", "A"), Record("a2", "MKA", "A"), Record("b1", "WWW", "B")])


def test_classify_cli_method_probe_reports_beside_the_baselines(tiny, tmp_path):
    model, tok = tiny
    model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    train, test = _families(8, 2), _families(3, 3)
    formats.write_fasta(((f"{r.id} Family=<{r.label}>", r.seq) for r in train), tmp_path / "train.fa")
    formats.write_fasta(((f"{r.id} Family=<{r.label}>", r.seq) for r in test), tmp_path / "q.fa")
    r = CliRunner().invoke(app, ["classify", "--model", str(tmp_path / "model"), "--fasta", str(tmp_path / "q.fa"),
                                 "--train", str(tmp_path / "train.fa"), "--task-name", "family", "--method", "probe",
                                 "--out", str(tmp_path / "p.csv")])
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader((tmp_path / "p.csv").open()))
    acc = sum(row["prediction"] == row["label"] for row in rows) / len(rows)
    assert f"accuracy on 6 sequences: model (probe) {acc:.3f}" in r.output
    assert "majority class" in r.output and "3-mer logistic regression" in r.output
    assert "chosen by cross-validation on --train" in r.output
