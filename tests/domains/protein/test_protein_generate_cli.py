"""Through the CLI: the stages save what they trained on, `sample` refuses a label the model never saw,
`evaluate` takes a reference set and refuses samples of labels outside it, and names its model."""

import json

import pytest
from typer.testing import CliRunner

from adaptome.domains.protein import sample
from adaptome.domains.protein.cli import app
from adaptome.domains.protein.data import data_dir

runner = CliRunner()


@pytest.fixture(scope="module")
def stages(tmp_path_factory):
    """build-dataset -> pretrain (3 steps) -> instruct (3 steps) on the shipped Pfam families, tiny."""
    from protein_stages import cli_stages

    return cli_stages(tmp_path_factory.mktemp("gen_cli"), 3)


def test_stages_save_lengths_and_labels_with_the_model(stages):
    from adaptome.domains.protein import data

    whole = data.pfam_families()
    s1 = json.loads((stages / "s1" / "merged" / "training_data.json").read_text())
    assert s1["stage"] == "pretrain" and "labels" not in s1
    # stage 1 got whole sequences (build-dataset crops only the instructions)
    assert s1["sequence_lengths"]["max"] == max(len(r.seq) for r in whole) > 40
    assert s1["max_sequence_tokens"] == s1["sequence_lengths"]["max"] + 6  # Seq=< ... >, one token a letter
    s2 = json.loads((stages / "s2" / "merged" / "training_data.json").read_text())
    counts = {}
    for r in whole:
        counts[r.label] = counts.get(r.label, 0) + 2  # one generate and one determine record each
    assert s2["labels"] == {"Family": counts}
    assert s2["sequence_lengths"]["max"] == 40  # the generation records' (cropped) answers
    assert (stages / "s2" / "adapter" / "training_data.json").read_text() == \
        (stages / "s2" / "merged" / "training_data.json").read_text()


def test_sample_refuses_a_label_the_model_never_saw(stages, tmp_path):
    model = str(stages / "s2" / "merged")
    r = runner.invoke(app, ["sample", "--model", model, "--task-name", "family", "--label", "Pkinase", "-n", "1",
                            "--out", str(tmp_path / "g.fa")])
    assert r.exit_code == 2 and "Family=<Pkinase>" in r.output and "never seen" in r.output, r.output
    assert "Cyclin_N" in r.output and "--allow-unseen-labels" in r.output and not (tmp_path / "g.fa").exists()
    # the same label under another key was never seen either
    r = runner.invoke(app, ["sample", "--model", model, "--label", "Cyclin_N", "-n", "1",
                            "--out", str(tmp_path / "g.fa")])
    assert r.exit_code == 2 and "Superfamily=<Cyclin_N>" in r.output and "trained on: no Superfamily" in r.output
    r = runner.invoke(app, ["sample", "--model", model, "--task-name", "family", "--label", "Pkinase", "-n", "1",
                            "--allow-unseen-labels", "--max-new-tokens", "5", "--out", str(tmp_path / "g.fa")])
    assert r.exit_code == 0 and "sampling anyway" in r.output, r.output
    # a seen label: the preset for a tiny model and the length limit from the saved training lengths
    r = runner.invoke(app, ["sample", "--model", model, "--task-name", "family", "--label", "Cyclin_N", "-n", "1",
                            "--out", str(tmp_path / "h.fa")])
    assert r.exit_code == 0, r.output
    assert "sampling preset: small" in r.output and "max_new_tokens 69: 1.5 x the longest training sequence" in r.output
    head = (tmp_path / "h.fa").read_text().splitlines()[0]
    assert "max_new_tokens=69" in head and f"temperature={sample.PRESETS['small'].temperature}" in head
    r = runner.invoke(app, ["sample", "--model", model, "--task-name", "family", "--label", "Cyclin_N", "-n", "1",
                            "--max-new-tokens", "5000", "--out", str(tmp_path / "i.fa")])
    assert r.exit_code == 2 and "position limit 1024" in r.output


def test_evaluate_refuses_foreign_labels_and_takes_a_reference(stages, tmp_path):
    model = str(stages / "s2" / "merged")
    gen = tmp_path / "g.fa"
    gen.write_text(">gen-0001 condition=Family=<Pkinase> | prefix=- | complete=yes | invalid=0\nMKVLAAGHT\n"
                   ">gen-0002 condition=Family=<Cyclin_N> | prefix=- | complete=yes | invalid=0\nMKVLAAGHT\n")
    r = runner.invoke(app, ["evaluate", "--model", model, "--samples", str(gen), "--out", str(tmp_path / "rep")])
    assert r.exit_code == 2 and "'Pkinase'" in r.output and "not in the reference label set" in r.output, r.output
    assert not (tmp_path / "rep").exists()
    # a reference FASTA (labels in the headers, as build-dataset writes them) holding both labels
    ref = tmp_path / "ref.fa"
    fam = (stages / "ds" / "sequences.fasta").read_text()
    extra = "".join(f">pk{i} Family=<Pkinase>\n{'MKV' * (20 + i)}LLAGHT\n" for i in range(5))
    ref.write_text(fam + extra)
    r = runner.invoke(app, ["evaluate", "--model", model, "--samples", str(gen), "--reference", str(ref),
                            "--out", str(tmp_path / "rep")])
    assert r.exit_code == 0, r.output
    rep = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert rep["model"] == model and f"Model: `{model}`" in r.output and "stage-1" not in r.output
    pk = rep["generation"]["per_label"]["Pkinase"]
    assert pk["n_real"] == 5 and pk["real_mean_length"] == pytest.approx(3 * 22 + 6)
    assert pk["mean_length"] == 9 and pk["length_ks_statistic"] == 1.0
    # a Stockholm reference: the label is the family ID (#=GF ID)
    r = runner.invoke(app, ["evaluate", "--model", model, "--samples", str(gen), "--reference",
                            str(data_dir() / "pfam" / "pfam8.seed.txt"), "--out", str(tmp_path / "rep2")])
    assert r.exit_code == 2 and "'Pkinase'" in r.output and "reference: Cyclin_N" in r.output
