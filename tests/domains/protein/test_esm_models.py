"""ESM-style masked LMs in the protein commands: masked-marginal mutation scoring (an explicit formula
and a planted preference), the BLOSUM62 baseline beside it, and classification with a head and an
adapter trained through ``fit`` (a planted composition signal learned, the saved classifier reused)."""

import csv
import shutil

import pytest
import tiny_models
import torch
from typer.testing import CliRunner

from adaptome.core.evaluation import spearman
from adaptome.domains.protein.cli import app
from adaptome.domains.protein.mutations import blosum62_scores, score_mutants

runner = CliRunner()
WT = "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQ"


@pytest.fixture(scope="module")
def esm_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_esm")
    tiny_models.esm_checkpoint(folder)
    return folder


def test_masked_marginal_is_log_p_mutant_minus_log_p_wildtype_at_the_masked_position(esm_dir):
    from adaptome.domains.protein.model import load_masked_lm

    model, tok = load_masked_lm(str(esm_dir))
    offset = 10  # position p is residue p - 10 of WT
    muts = ["K11W", "A13G", "K11W:A13G", "Q42P"]
    got = score_mutants(model, tok, WT, muts, offset)

    def single(ref, pos, alt):
        ids = torch.tensor([tok(WT)["input_ids"]])  # (1, T): <cls> residues <eos>
        assert ids[0, 1 + pos - offset] == tok.convert_tokens_to_ids(ref)
        ids[0, 1 + pos - offset] = tok.mask_token_id
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0, 1 + pos - offset], -1)  # (V,)
        return float(logp[tok.convert_tokens_to_ids(alt)] - logp[tok.convert_tokens_to_ids(ref)])

    want = [single("K", 11, "W"), single("A", 13, "G"), single("K", 11, "W") + single("A", 13, "G"),
            single("Q", 42, "P")]
    assert got == pytest.approx(want, abs=1e-5)
    assert len({round(x, 4) for x in got}) == 4  # a random model has no ties here: the test can fail
    assert blosum62_scores(muts) == [-3.0, 0.0, -3.0, -1.0]  # BLOSUM62 K-W -3, A-G 0, Q-P -1


def test_planted_preference_is_recovered_through_the_cli(esm_dir, tmp_path):
    """A hand-set output bias makes the model prefer W everywhere; the measured fitness says the same,
    so the model's Spearman must be high and beat BLOSUM62's on the same mutants."""
    from transformers import EsmForMaskedLM

    model = EsmForMaskedLM.from_pretrained(esm_dir)
    with torch.no_grad():
        model.lm_head.bias[tiny_models.ESM_VOCAB.index("W")] += 8.0
    planted = tmp_path / "planted"
    model.save_pretrained(planted)
    tiny_models.esm_tokenizer(planted).save_pretrained(planted)
    rows = [(f"{WT[i]}{i + 1}{alt}", 1.0 if alt == "W" else 0.0) for i in range(0, 30, 3) for alt in "WGDP"
            if WT[i] != alt]
    with (tmp_path / "m.csv").open("w", newline="") as f:
        csv.writer(f).writerows([("mutant", "dms")] + rows)
    long_wt = WT * 9  # 297 residues: a sequence argument, never a file name
    r = runner.invoke(app, ["score-mutations", "--model", str(planted), "--mutants", str(tmp_path / "m.csv"),
                            "--wildtype", long_wt, "--offset", "1", "--fitness-column", "dms",
                            "--out", str(tmp_path / "s.csv")])
    assert r.exit_code == 0, r.output
    line = next(ln for ln in r.output.splitlines() if ln.startswith("Spearman"))
    model_rho = float(line.split("model ")[1].split(",")[0])
    blosum_rho = float(line.split("BLOSUM62 baseline ")[1].split(" ")[0])
    out = list(csv.DictReader((tmp_path / "s.csv").open()))
    assert [o["mutant"] for o in out] == [m for m, _ in rows]
    to_w = [float(o["score"]) for o in out if o["mutant"].endswith("W")]
    other = [float(o["score"]) for o in out if not o["mutant"].endswith("W")]
    assert min(to_w) > 5 > max(other)  # every mutation to W ranks first, by about the planted bias
    # the most untied scores can reach against a 0/1 fitness: every 1 above every 0
    best = spearman([f + 1e-6 * i for i, (_, f) in enumerate(rows)], [f for _, f in rows])
    assert model_rho == pytest.approx(best, abs=2e-3) and model_rho > blosum_rho + 0.3
    assert [float(o["blosum62"]) for o in out] == blosum62_scores([m for m, _ in rows])
    # the wild type as a FASTA file gives the same scores
    (tmp_path / "wt.fa").write_text(">wt\n" + long_wt + "\n")
    r = runner.invoke(app, ["score-mutations", "--model", str(planted), "--mutants", str(tmp_path / "m.csv"),
                            "--wildtype", str(tmp_path / "wt.fa"), "--offset", "1", "--out", str(tmp_path / "s2.csv")])
    assert r.exit_code == 0, r.output
    assert [o["score"] for o in csv.DictReader((tmp_path / "s2.csv").open())] == [o["score"] for o in out]


def _write_split(tmp_path, name, n, seed):
    """Two classes told apart by composition: W-rich vs K-rich random sequences of 12 residues."""
    g = torch.Generator().manual_seed(seed)
    base = "ACDEFGHILMNPQRSTVY"
    recs = []
    for i in range(n):
        label = "wrich" if i % 2 == 0 else "krich"
        letters = [base[int(j)] for j in torch.randint(len(base), (12,), generator=g)]
        for j in torch.randperm(12, generator=g)[:5].tolist():
            letters[j] = "W" if label == "wrich" else "K"
        recs.append((f"{name}{i}", "".join(letters), label))
    (tmp_path / f"{name}.fa").write_text("".join(f">{i}\n{s}\n" for i, s, _ in recs))
    (tmp_path / f"{name}.csv").write_text("id,label\n" + "".join(f"{i},{lab}\n" for i, _, lab in recs))


def test_esm_classify_trains_head_and_adapter_and_learns_a_planted_signal(esm_dir, tmp_path):
    _write_split(tmp_path, "train", 32, 0)
    _write_split(tmp_path, "test", 12, 1)
    run = tmp_path / "run"
    r = runner.invoke(app, ["classify", "--model", str(esm_dir), "--train-fasta", str(tmp_path / "train.fa"),
                            "--train-labels", str(tmp_path / "train.csv"), "--fasta", str(tmp_path / "test.fa"),
                            "--test-labels", str(tmp_path / "test.csv"), "--out", str(tmp_path / "p.csv"),
                            "--set", f"train.output_dir={run}", "--set", "train.max_steps=40",
                            "--set", "train.lr=1e-2", "--set", "train.progress=false"])
    assert r.exit_code == 0, r.output
    acc = next(ln for ln in r.output.splitlines() if ln.startswith("accuracy"))
    assert "model 1.000" in acc and "majority class" in acc and "3-mer logistic regression" in acc
    assert "trained lora + head on 32 sequences, 2 labels" in r.output
    preds = (tmp_path / "p.csv").read_text()
    # the merged classifier predicts the same without training again; its labels travel in its config
    r = runner.invoke(app, ["classify", "--model", str(run / "merged"), "--fasta", str(tmp_path / "test.fa"),
                            "--out", str(tmp_path / "p2.csv")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "p2.csv").read_text() == preds
    # a plain masked LM without training data: a clear refusal, nothing written
    r = runner.invoke(app, ["classify", "--model", str(esm_dir), "--fasta", str(tmp_path / "test.fa"),
                            "--out", str(tmp_path / "p3.csv")])
    assert r.exit_code == 2 and "without a trained classification head" in r.output
    assert not (tmp_path / "p3.csv").exists()
    # the causal LM's options are refused for an ESM model instead of being ignored
    r = runner.invoke(app, ["classify", "--model", str(run / "merged"), "--fasta", str(tmp_path / "test.fa"),
                            "--method", "bayes", "--out", str(tmp_path / "p4.csv")])
    assert r.exit_code == 2 and "--method" in r.output


def test_esm_classify_resume_refuses_changed_training_data(esm_dir, tmp_path):
    """A stopped run resumed with other training data is refused by name, not continued; --overwrite starts
    again."""
    _write_split(tmp_path, "train", 8, 0)
    args = ["classify", "--model", str(esm_dir), "--train-fasta", str(tmp_path / "train.fa"), "--train-labels",
            str(tmp_path / "train.csv"), "--fasta", str(tmp_path / "train.fa"), "--set", "train.max_steps=4",
            "--set", "train.warmup_steps=0", "--set", "train.batch_size=4",
            "--set", "train.save_every=2", "--set", f"train.output_dir={tmp_path / 'run'}", "--set", "merge=false",
            "--set", "train.progress=false"]
    r = runner.invoke(app, args + ["--out", str(tmp_path / "a.csv")])
    assert r.exit_code == 0, r.output
    _write_split(tmp_path, "train", 8, 5)
    shutil.rmtree(tmp_path / "run" / "adapter")  # as a run stopped after its checkpoints leaves the folder
    r = runner.invoke(app, args + ["--out", str(tmp_path / "b.csv"), "--set", "train.max_steps=6"])
    assert r.exit_code == 2 and "data_sha256" in r.output, r.output
    # --overwrite starts again on the new data (the old checkpoints go), as pretrain / instruct / train do
    r = runner.invoke(app, args + ["--out", str(tmp_path / "b.csv"), "--overwrite", "--set", "train.max_steps=6"])
    assert r.exit_code == 0 and "6 steps" in r.output, r.output
