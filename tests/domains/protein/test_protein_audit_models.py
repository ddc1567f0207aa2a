"""Audit of the protein model commands, through the CLI: score-mutations refuses a checkpoint without a
masked-LM head (ESM classify's merged classifier), ESM classify applies --policy to the training FASTA too,
sample cleans --prefix and refuses labels its FASTA headers cannot hold, and evaluate says when its
"held-out" reference sequences are ones the model was trained on (and refuses two references)."""

import json

import pytest
import tiny_models
from protein_stages import one_line_error
from typer.testing import CliRunner

from adaptome.domains.protein.cli import app

runner = CliRunner()


# --- 1. score-mutations on a sequence classifier ---------------------------------------------------------
def test_score_mutations_refuses_a_classifier_folder_without_masked_lm_head(tmp_path):
    cls = tmp_path / "esm_classify" / "merged"
    tiny_models.esm_checkpoint(cls, head="sequence_classification", num_labels=2)
    out = tmp_path / "s.csv"
    r = runner.invoke(app, ["score-mutations", "--model", str(cls), "--out", str(out)])
    one_line_error(r, str(cls), "sequence classifier", "without a masked-LM head",
                    "the masked LM the classifier was trained from")
    assert not out.exists()
    # without `architectures` in its config the missing head weights give it away
    cfg = json.loads((cls / "config.json").read_text())
    cfg.pop("architectures")
    (cls / "config.json").write_text(json.dumps(cfg))
    r = runner.invoke(app, ["score-mutations", "--model", str(cls), "--out", str(out)])
    one_line_error(r, str(cls), "no masked-LM head weights", "lm_head.")
    assert not out.exists()


def test_score_mutations_still_scores_a_masked_lm(tmp_path):
    tiny_models.esm_checkpoint(tmp_path / "mlm")
    r = runner.invoke(app, ["score-mutations", "--model", str(tmp_path / "mlm"), "--out", str(tmp_path / "s.csv")])
    assert r.exit_code == 0, r.output
    assert "mutants scored by masked marginals" in r.output


# --- 2. ESM classify --policy ------------------------------------------------------------------------------
def _esm_files(tmp_path):
    tiny_models.esm_checkpoint(tmp_path / "mlm")
    seqs = ["MKTAYIAKQRQISFV", "MWWAYWAKQWQISFV", "MKTXYIAKQRQKSFV", "MWWAYWAKQWQIWFV"]  # an X in the third
    (tmp_path / "t.fa").write_text("".join(f">s{i}\n{s}\n" for i, s in enumerate(seqs)))
    (tmp_path / "t.csv").write_text("id,label\n" + "".join(f"s{i},{'ab'[i % 2]}\n" for i in range(4)))
    return ["classify", "--model", str(tmp_path / "mlm"), "--train-fasta", str(tmp_path / "t.fa"), "--train-labels",
            str(tmp_path / "t.csv"), "--fasta", str(tmp_path / "t.fa"), "--set", "train.max_steps=2",
            "--set", "train.warmup_steps=0", "--set", "train.batch_size=2", "--set", "train.progress=false"]


def test_esm_classify_policy_applies_to_the_training_fasta(tmp_path):
    args = _esm_files(tmp_path)
    run = tmp_path / "run"
    r = runner.invoke(app, args + ["--policy", "keep", "--set", f"train.output_dir={run}",
                                   "--out", str(tmp_path / "p.csv")])
    assert r.exit_code == 0, r.output
    assert "trained lora + head on 4 sequences" in r.output
    assert len((tmp_path / "p.csv").read_text().splitlines()) == 5
    saved = next(run.glob("*.yaml")).read_text()
    assert "residue_policy: keep" in saved  # the saved config says what training read
    # a residue_policy in the config, without --policy, covers the queries too
    r = runner.invoke(app, args + ["--set", "residue_policy=keep", "--set", f"train.output_dir={tmp_path / 'run2'}",
                                   "--out", str(tmp_path / "p2.csv")])
    assert r.exit_code == 0, r.output
    # an explicit --policy that contradicts the config's is refused, never silently dropped
    r = runner.invoke(app, args + ["--policy", "error", "--set", "residue_policy=keep",
                                   "--set", f"train.output_dir={tmp_path / 'run3'}", "--out", str(tmp_path / "p3.csv")])
    one_line_error(r, "--policy error contradicts residue_policy keep")
    assert not (tmp_path / "p3.csv").exists() and not (tmp_path / "run3").exists()


def test_esm_classify_policy_skip_counts_what_it_leaves_out(tmp_path):
    """With ``--policy skip`` the training and the query files each say how many records were left out; a
    skipped query gets no row in the predictions, so the count is the user's only sign of it."""
    args = _esm_files(tmp_path)
    r = runner.invoke(app, args + ["--policy", "skip", "--set", f"train.output_dir={tmp_path / 'run'}",
                                   "--out", str(tmp_path / "p.csv")])
    assert r.exit_code == 0, r.output
    notes = [ln for ln in r.output.splitlines() if "skipped (policy skip)" in ln]
    assert len(notes) == 2 and all("1 record(s)" in n and "'s2'" in n for n in notes), r.output
    assert "trained lora + head on 3 sequences" in r.output
    assert [ln.split(",")[0] for ln in (tmp_path / "p.csv").read_text().splitlines()[1:]] == ["s0", "s1", "s3"]


# --- 3. sample --prefix and labels in headers -------------------------------------------------------------
@pytest.fixture
def causal_dir(tmp_path):
    from adaptome.domains.protein.model import load_model_and_tokenizer

    m, tok = load_model_and_tokenizer(None, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2)
    m.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    return tmp_path / "m"


def test_sample_prefix_is_cleaned_and_checked(causal_dir, tmp_path):
    from adaptome.domains.protein.evaluate import read_samples

    out = tmp_path / "g.fa"
    r = runner.invoke(app, ["sample", "--model", str(causal_dir), "-n", "2", "--prefix", "mkv", "--max-new-tokens",
                            "5", "--out", str(out)])
    assert r.exit_code == 0, r.output
    samples = read_samples(out)
    assert len(samples) == 2 and all(s.seq.startswith("MKV") and not s.invalid for s in samples)
    assert "prefix=MKV |" in out.read_text()
    for bad, ch in (("MK>", "'>'"), ("MK V", "' '"), ("Family=<X", "'='")):
        r = runner.invoke(app, ["sample", "--model", str(causal_dir), "-n", "1", "--prefix", bad, "--out",
                                str(tmp_path / "h.fa")])
        one_line_error(r, "--prefix", ch, "not an amino-acid letter")
        assert not (tmp_path / "h.fa").exists()


def test_sample_refuses_a_label_its_header_cannot_hold_and_evaluate_names_the_file(causal_dir, tmp_path):
    out = tmp_path / "g.fa"
    r = runner.invoke(app, ["sample", "--model", str(causal_dir), "-n", "1", "--label", "Kin | ase",
                            "--task-name", "family", "--max-new-tokens", "5", "--out", str(out)])
    one_line_error(r, "--label 'Kin | ase'", "cannot be written into a sample's FASTA header")
    assert not out.exists()
    # a samples file with such a header (written by hand or by an older version): the error names it
    out.write_text(">gen-0001 condition=Family=<Kin | ase> | prefix=- | complete=yes | invalid=0\nMKV\n")
    r = runner.invoke(app, ["evaluate", "--model", str(causal_dir), "--samples", str(out),
                            "--out", str(tmp_path / "rep")])
    one_line_error(r, str(out), "gen-0001", "Family=<Kin")
    assert not (tmp_path / "rep").exists()


# --- 4. evaluate on the model's own training sequences ---------------------------------------------------
@pytest.fixture(scope="module")
def stages(tmp_path_factory):
    """build-dataset -> pretrain (2 steps) -> instruct (2 steps) on the shipped Pfam families, tiny."""
    from protein_stages import cli_stages

    return cli_stages(tmp_path_factory.mktemp("audit_models"), 2, "sequences.fasta")


def test_stages_record_fingerprints_and_stage2_inherits_stage1s(stages):
    from adaptome.domains.protein import data
    from adaptome.domains.protein.training_data import fingerprint, trained_on

    whole = [r.seq for r in data.pfam_families()]
    s1 = json.loads((stages / "s1" / "merged" / "training_data.json").read_text())
    assert s1["sequence_sha1"] == fingerprint(whole) and len(s1["sequence_sha1"]) == len(set(whole))
    s2 = json.loads((stages / "s2" / "merged" / "training_data.json").read_text())
    assert set(s1["sequence_sha1"]) < set(s2["sequence_sha1"])  # stage 1's, and stage 2's 40-residue crops
    own = set(s2["sequence_sha1"]) - set(s1["sequence_sha1"])
    assert own and {p.split(":")[0] for p in own} == {"40"}
    # the crops alone recognise the whole sequences they were cut from
    assert all(trained_on([s for s in whole if len(s) > 40], own))
    assert not any(trained_on(["MKV" * 30, whole[0][1:]], s1["sequence_sha1"]))


def test_evaluate_says_the_reference_was_trained_on(stages, tmp_path):
    model = str(stages / "s2" / "merged")
    ref = stages / "ds" / "sequences.fasta"
    r = runner.invoke(app, ["evaluate", "--model", model, "--reference", str(ref), "--task-name", "family",
                            "--out", str(tmp_path / "rep")])
    assert r.exit_code == 0, r.output
    rep = json.loads((tmp_path / "rep" / "report.json").read_text())
    n = rep["n_perplexity_sequences"]
    assert rep["held_out"] == {"n": n, "n_trained_on": n}
    warn = [ln for ln in r.output.splitlines() if ln.startswith("warning:")]
    assert len(warn) == 1 and f"{n} of the {n} held-out sequences" in warn[0] and str(ref) in warn[0]
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "Held-out perplexity" not in md and "## Classification (held-out)" not in md
    assert "Not held-out perplexity" in md and f"## Classification (not held-out: {n} test sequences" in md
    # sequences the model never saw: held out, and said so by nothing but the usual titles
    fresh = tmp_path / "fresh.fa"
    fresh.write_text("".join(f">f{lab}{i} Family=<{lab}>\n{'MKVLAGHTWY'[i:] + lab * (30 + i)}\n"
                             for lab in ("A", "C") for i in range(5)))
    r = runner.invoke(app, ["evaluate", "--model", model, "--reference", str(fresh), "--task-name", "family",
                            "--out", str(tmp_path / "rep2")])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "rep2" / "report.json").read_text())["held_out"] == {"n": 6, "n_trained_on": 0}
    assert "warning:" not in r.output and "## Classification (held-out)" in r.output


def test_evaluate_refuses_a_reference_and_a_shipped_set_together(stages, tmp_path):
    r = runner.invoke(app, ["evaluate", "--model", str(stages / "s2" / "merged"), "--reference",
                            str(stages / "ds" / "sequences.fasta"), "--shipped", "ec", "--out", str(tmp_path / "rep")])
    one_line_error(r, "--reference", "--shipped ec")
    assert not (tmp_path / "rep").exists()
