"""Audit (round 4) of stale reuse between the protein stages, through the CLI: ``pretrain`` / ``instruct
--overwrite`` start the stage again (an earlier run's checkpoints were resumed: a finished one on other data of the
same size wrote the old model again; one of another configuration was refused); a stage's resume checks the data and
the base weights it trains on; stage 2 records its stage-1 model by absolute path and weights digest, and a stage 2
resumed on a stage 1 retrained in place is one line naming both folders; ``build-dataset`` records the digests of
its inputs, and a stage trained on a dataset whose inputs have changed since is said."""

import json
import random

from protein_stages import one_line_error
from safetensors.torch import load_file
from typer.testing import CliRunner

from adaptome.domains.protein.cli import app
from adaptome.domains.protein.data import data_dir

runner = CliRunner()
CFGS = data_dir().parent / "configs"
TINY = ["--set", "train.progress=false", "--set", "model.hidden_size=32", "--set", "model.intermediate_size=64",
        "--set", "model.num_layers=1", "--set", "model.num_heads=2"]
RNG = random.Random(0)
SEQS = ["".join(RNG.choice("ACDEFGHIKLMNPQRSTVWY") for _ in range(30 + 3 * i)) for i in range(12)]


def _seq_file(path, seqs):
    path.write_text("".join(f"Seq=<{s}>\n" for s in seqs))
    return path


def _pretrain(tmp, data, out, *extra):
    return runner.invoke(app, ["pretrain", "-c", str(CFGS / "pretrain_tiny.yaml"), "--set", f"train_files=[{data}]",
                               "--set", "block_size=64", "--set", "train.max_steps=2", "--set",
                               f"train.output_dir={out}", *TINY, *extra])


def _instruct(data, base, out, *extra):
    return runner.invoke(app, ["instruct", "-c", str(CFGS / "instruct_tiny.yaml"), "--set", f"train_files=[{data}]",
                               "--set", f"model.name_or_path={base}", "--set", f"train.output_dir={out}",
                               "--set", "train.max_steps=2", "--set", "train.progress=false", *extra])


def _weights(folder):
    return load_file(str(folder / "model.safetensors"))


# --- pretrain / instruct --overwrite ---------------------------------------------------------------------------
def test_pretrain_overwrite_on_other_data_of_the_same_size_trains_again(tmp_path):
    s1 = tmp_path / "s1"
    r = _pretrain(tmp_path, _seq_file(tmp_path / "a.txt", SEQS), s1)
    assert r.exit_code == 0, r.output
    old = _weights(s1 / "merged")
    # the same lengths, other residues: as many blocks, so the run's size alone cannot tell them apart
    shuffled = ["".join(RNG.sample(s, len(s))) for s in SEQS]
    r = _pretrain(tmp_path, _seq_file(tmp_path / "b.txt", shuffled), s1, "--overwrite")
    assert r.exit_code == 0, r.output
    assert "loss nan" not in r.output, r.output  # the finished checkpoint was "resumed": no step taken
    new = _weights(s1 / "merged")
    assert any(not (old[k] == new[k]).all() for k in old), "the old model was written again"


def test_pretrain_resume_on_other_data_is_refused_naming_it(tmp_path):
    s1 = tmp_path / "s1"
    r = _pretrain(tmp_path, _seq_file(tmp_path / "a.txt", SEQS), s1)
    assert r.exit_code == 0, r.output
    for sub in ("adapter", "merged"):  # as a stage stopped before it saved: its checkpoints alone are left
        import shutil

        shutil.rmtree(s1 / sub)
    shuffled = ["".join(RNG.sample(s, len(s))) for s in SEQS]
    r = _pretrain(tmp_path, _seq_file(tmp_path / "b.txt", shuffled), s1)
    one_line_error(r, "checkpoints", "data")


def test_pretrain_overwrite_with_another_seed_starts_again(tmp_path):
    s1 = tmp_path / "s1"
    data = _seq_file(tmp_path / "a.txt", SEQS)
    assert _pretrain(tmp_path, data, s1).exit_code == 0
    r = _pretrain(tmp_path, data, s1, "--set", "train.seed=7", "--overwrite")
    assert r.exit_code == 0, r.output
    assert "2 steps" in r.output
    state = json.loads((s1 / "checkpoints" / "step-2" / "trainer_state.json").read_text())
    assert state["identity"]["train.seed"] == 7


# --- stage 2 and its stage-1 model -----------------------------------------------------------------------------
def _two_stages(tmp_path):
    ds = tmp_path / "ds"
    r = runner.invoke(app, ["build-dataset", "--shipped", "pfam", "--task-name", "family", "--max-residues", "40",
                            "--out", str(ds)])
    assert r.exit_code == 0, r.output
    r = _pretrain(tmp_path, ds / "sequences.txt", tmp_path / "s1")
    assert r.exit_code == 0, r.output
    r = _instruct(ds / "instructions.jsonl", tmp_path / "s1" / "merged", tmp_path / "s2", *TINY[:4])
    assert r.exit_code == 0, r.output
    return ds


def test_stage2_records_its_stage1_model_by_absolute_path_and_weights_digest(tmp_path, monkeypatch):
    import shutil

    monkeypatch.chdir(tmp_path)  # a relative stage-1 folder, as the README's commands give it
    ds = tmp_path / "ds"
    r = runner.invoke(app, ["build-dataset", "--shipped", "pfam", "--task-name", "family", "--max-residues", "40",
                            "--out", "ds"])
    assert r.exit_code == 0, r.output
    assert _pretrain(tmp_path, "ds/sequences.txt", "s1").exit_code == 0
    r = _instruct("ds/instructions.jsonl", "s1/merged", "s2", *TINY[:4])
    assert r.exit_code == 0, r.output
    peft = json.loads((tmp_path / "s2" / "adapter" / "adapter_config.json").read_text())
    assert peft["base_model_name_or_path"] == str(tmp_path / "s1" / "merged")
    for sub in ("adapter", "merged"):
        base = json.loads((tmp_path / "s2" / sub / "training_data.json").read_text())["base_model"]
        assert base["path"] == str(tmp_path / "s1" / "merged")
        assert len(base["weights_digest"]) == 64
    del ds, shutil


def test_stage2_resumed_on_a_retrained_stage1_is_one_line_naming_both_folders(tmp_path):
    import shutil

    ds = _two_stages(tmp_path)
    s2 = tmp_path / "s2"
    for sub in ("adapter", "merged"):  # stage 2 stopped before it saved: its checkpoints are left
        shutil.rmtree(s2 / sub)
    r = _pretrain(tmp_path, ds / "sequences.txt", tmp_path / "s1", "--set", "train.seed=7", "--overwrite")
    assert r.exit_code == 0, r.output
    r = _instruct(ds / "instructions.jsonl", tmp_path / "s1" / "merged", s2, *TINY[:4])
    one_line_error(r, str(tmp_path / "s1" / "merged"), str(s2 / "checkpoints"), "--overwrite")
    assert not (s2 / "adapter").exists()


# --- build-dataset inputs ----------------------------------------------------------------------------------------
def _family_fasta(path, seqs):
    path.write_text("".join(f">p{i}\n{s}\n" for i, s in enumerate(seqs)))
    return path


def test_build_dataset_records_its_inputs_and_a_stage_on_changed_inputs_says_so(tmp_path):
    fa = _family_fasta(tmp_path / "fam.fa", SEQS)
    table = tmp_path / "labels.csv"
    table.write_text("id,label\n" + "".join(f"p{i},{'EC1' if i % 2 else 'EC2'}\n" for i in range(len(SEQS))))
    ds = tmp_path / "ds"
    r = runner.invoke(app, ["build-dataset", "--fasta", str(fa), "--labels", str(table), "--task-name", "EC",
                            "--out", str(ds)])
    assert r.exit_code == 0, r.output
    rec = json.loads((ds / "inputs.json").read_text())
    assert [f["path"] for f in rec["files"]] == [str(fa), str(table)]
    assert all(len(f["sha256"]) == 64 for f in rec["files"])
    assert rec["options"]["task_name"] == "EC" and rec["options"]["max_seq_length"] == 256
    r = _pretrain(tmp_path, ds / "sequences.txt", tmp_path / "s1")
    assert r.exit_code == 0, r.output
    assert "warning" not in r.output
    # the labels are corrected after the build: the dataset still holds the old ones
    table.write_text(table.read_text().replace("p0,EC2", "p0,EC1"))
    r = _instruct(ds / "instructions.jsonl", tmp_path / "s1" / "merged", tmp_path / "s2", *TINY[:4])
    assert r.exit_code == 0, r.output
    warn = [ln for ln in r.output.splitlines() if ln.startswith("warning:")]
    assert len(warn) == 1 and str(ds) in warn[0] and str(table) in warn[0] and "changed" in warn[0], r.output


# --- ESM classify --overwrite ------------------------------------------------------------------------------------
def test_esm_classify_overwrite_says_it_replaced_the_classifier(tmp_path):
    """--overwrite covers the predictions CSV and the trained classifier alike: replacing the classifier is said."""
    import tiny_models

    folder = tmp_path / "esm"
    tiny_models.esm_checkpoint(folder)
    fa = _family_fasta(tmp_path / "t.fa", SEQS[:6])
    table = tmp_path / "t.csv"
    table.write_text("id,label\n" + "".join(f"p{i},{lab}\n" for i, lab in enumerate("aabbab")))
    out_dir = tmp_path / "cls"

    def classify(*extra):
        return runner.invoke(app, ["classify", "--model", str(folder), "--train-fasta", str(fa), "--train-labels",
                                   str(table), "--fasta", str(fa), "--out", str(tmp_path / "p.csv"), "--set",
                                   "train.max_steps=2", "--set", "train.warmup_steps=0", "--set",
                                   "train.batch_size=2", "--set", "train.progress=false", "--set",
                                   f"train.output_dir={out_dir}", *extra])

    r = classify()
    assert r.exit_code == 0, r.output
    assert "replaced" not in r.output
    r = classify("--overwrite")  # meant for p.csv: the classifier in train.output_dir is replaced too
    assert r.exit_code == 0, r.output
    assert f"--overwrite replaced the classifier in {out_dir}" in r.output, r.output


# --- score-mutations: a wild type with X / U ---------------------------------------------------------------------
def test_score_mutations_names_a_non_standard_wild_type_residue_without_a_policy_it_has_not(tmp_path):
    """score-mutations has no --policy: its error must not send the user to one; a later record is not read."""
    import tiny_models

    folder = tmp_path / "esm"
    tiny_models.esm_checkpoint(folder)
    wt = tmp_path / "selenoprotein.fa"
    wt.write_text(">wt\nMKTAYIAKQRQISFUKSHFSRQLEERLG\n")
    dms = tmp_path / "dms.csv"
    dms.write_text("mutant,DMS_score\nM1A,0.5\nK2R:T3S,-0.2\n")
    r = runner.invoke(app, ["score-mutations", "--model", str(folder), "--mutants", str(dms), "--wildtype", str(wt),
                            "--offset", "1", "--fitness-column", "DMS_score", "--out", str(tmp_path / "s.csv")])
    err = one_line_error(r, str(wt), "'U'", "position 15", "standard")
    assert "policy" not in err and "keep" not in err
    # the wild type is the first record: an X in a second one is no reason to stop
    wt.write_text(">wt\nMKTAYIAKQRQISFVKSHFSRQLEERLG\n>homolog\nMKTAYIAKXRQISFVKSHFSRQLEERLG\n")
    r = runner.invoke(app, ["score-mutations", "--model", str(folder), "--mutants", str(dms), "--wildtype", str(wt),
                            "--offset", "1", "--fitness-column", "DMS_score", "--out", str(tmp_path / "s.csv")])
    assert r.exit_code == 0, r.output


def test_a_resumed_stage_reports_step_1s_loss(tmp_path):
    """Review 2, finding 3: a resumed stage reported the resumed part's first loss ('loss 4.47 -> ...' where step 1
    had 4.61): the stage read its losses from this call's log lines. It now reports fit's step-1 loss, kept in the
    checkpoints, as adaptome train does."""
    import re
    import shutil

    data = _seq_file(tmp_path / "a.txt", SEQS)
    whole = _pretrain(tmp_path, data, tmp_path / "whole", "--set", "train.max_steps=4")
    assert whole.exit_code == 0, whole.output
    first = re.search(r"loss ([0-9.]+) ->", whole.output).group(1)
    s1 = tmp_path / "s1"
    assert _pretrain(tmp_path, data, s1, "--set", "train.save_every=2").exit_code == 0
    for sub in ("adapter", "merged"):  # stopped after its step-2 checkpoint
        shutil.rmtree(s1 / sub)
    r = _pretrain(tmp_path, data, s1, "--set", "train.max_steps=4", "--set", "train.save_every=2")
    assert r.exit_code == 0, r.output
    assert re.search(r"loss ([0-9.]+) ->", r.output).group(1) == first, (whole.output, r.output)


def test_a_dataset_moved_with_its_inputs_is_not_reported_stale(tmp_path):
    """Review 2, finding 6: inputs.json held absolute paths only, so moving a project (dataset and inputs
    together) made every stage warn that the inputs were gone. The inputs are also found beside the dataset by
    their relative path; a changed one is still reported."""
    import shutil

    proj = tmp_path / "proj"
    proj.mkdir()
    fa = _family_fasta(proj / "fam.fa", SEQS)
    table = proj / "labels.csv"
    table.write_text("id,label\n" + "".join(f"p{i},{'EC1' if i % 2 else 'EC2'}\n" for i in range(len(SEQS))))
    r = runner.invoke(app, ["build-dataset", "--fasta", str(fa), "--labels", str(table), "--task-name", "EC",
                            "--out", str(proj / "ds")])
    assert r.exit_code == 0, r.output
    moved = tmp_path / "moved"
    shutil.move(proj, moved)
    ds = moved / "ds"
    r = _pretrain(tmp_path, ds / "sequences.txt", tmp_path / "s1")
    assert r.exit_code == 0 and "warning" not in r.output, r.output
    (moved / "labels.csv").write_text((moved / "labels.csv").read_text().replace("p0,EC2", "p0,EC1"))
    r = _pretrain(tmp_path, ds / "sequences.txt", tmp_path / "s1b")
    warn = [ln for ln in r.output.splitlines() if ln.startswith("warning:")]
    assert len(warn) == 1 and "changed" in warn[0], r.output
