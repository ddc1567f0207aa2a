"""Stale results and corrupt files in the protein commands (audit: stale / corrupt, protein).

Each test failed on the code before its fix: ``evaluate --samples`` took a sample FASTA cut mid-record (mid-line,
or at a line break inside a record) as whole and reported on the shorter or missing sequences; a directory given as
``--samples`` was "file not found"; samples drawn from a stage-2 folder later retrained in place
(``instruct --overwrite``) were evaluated as that model's without a word (the header named only its path); a
truncated ``tokenizer.json`` beside the weights gave a JSON traceback.
"""

import shutil

import pytest
from protein_stages import cli_stages, one_line_error
from typer.testing import CliRunner

from adaptome.domains.protein.cli import app
from adaptome.domains.protein.data import data_dir

runner = CliRunner()


@pytest.fixture(scope="module")
def stages(tmp_path_factory):
    return cli_stages(tmp_path_factory.mktemp("stale_corrupt"), 2)


def _sample(model, out, *extra):
    r = runner.invoke(app, ["sample", "--model", str(model), "--task-name", "Family", "--label", "Cyclin_N",
                            "--label", "COX2_TM", "-n", "3", "--max-new-tokens", "70", "--out", str(out), *extra])
    assert r.exit_code == 0, r.output
    return out


def _evaluate(tmp, model, samples, out):
    return runner.invoke(app, ["evaluate", "--model", str(model), "--samples", str(samples), "--reference",
                               str(tmp / "ds" / "sequences.fasta"), "--task-name", "Family", "--out", str(out)])


def test_evaluate_refuses_a_sample_fasta_cut_mid_record(stages, tmp_path):
    gen = _sample(stages / "s2" / "merged", tmp_path / "gen.fasta")
    text = gen.read_text()
    lines = text.splitlines(keepends=True)
    cut_mid = tmp_path / "cut_mid.fasta"
    cut_mid.write_text(text[:-5])  # inside the last sequence
    r = _evaluate(stages, stages / "s2" / "merged", cut_mid, tmp_path / "ev1")
    one_line_error(r, str(cut_mid), "gen-0006", "cut")
    cut_header = tmp_path / "cut_header.fasta"
    cut_header.write_text("".join(lines[:-1])[:-40])  # inside the last header
    r = _evaluate(stages, stages / "s2" / "merged", cut_header, tmp_path / "ev2")
    one_line_error(r, str(cut_header), "cut")
    cut_line = tmp_path / "cut_line.fasta"
    cut_line.write_text("".join(lines[:-1]))  # at a line break: the last record lost its sequence line
    r = _evaluate(stages, stages / "s2" / "merged", cut_line, tmp_path / "ev3")
    one_line_error(r, str(cut_line), "gen-0006", "length=")
    folder = tmp_path / "as_dir.fasta"
    folder.mkdir()
    r = _evaluate(stages, stages / "s2" / "merged", folder, tmp_path / "ev4")
    one_line_error(r, str(folder), "a directory")
    assert not any((tmp_path / f"ev{i}").exists() for i in range(1, 5))
    # the whole file still evaluates
    assert _evaluate(stages, stages / "s2" / "merged", gen, tmp_path / "ev").exit_code == 0


def test_evaluate_warns_about_samples_of_a_model_retrained_in_place(stages, tmp_path):
    s2 = tmp_path / "s2"
    shutil.copytree(stages / "s2", s2)
    gen = _sample(s2 / "merged", tmp_path / "gen.fasta")
    r = _evaluate(stages, s2 / "merged", gen, tmp_path / "ev_same")
    assert r.exit_code == 0, r.output
    assert "other weights" not in r.output
    cfgs = data_dir().parent / "configs"
    r = runner.invoke(app, ["instruct", "-c", str(cfgs / "instruct_tiny.yaml"), "--set",
                            f"train_files=[{stages / 'ds' / 'instructions.jsonl'}]", "--set",
                            f"model.name_or_path={stages / 's1' / 'merged'}", "--set", f"train.output_dir={s2}",
                            "--set", "train.max_steps=3", "--set", "train.progress=false", "--overwrite"])
    assert r.exit_code == 0, r.output
    r = _evaluate(stages, s2 / "merged", gen, tmp_path / "ev_stale")
    assert r.exit_code == 0, r.output
    assert "held other weights" in r.output and "retrained or replaced since" in r.output, r.output
    import json

    notes = json.loads((tmp_path / "ev_stale" / "report.json").read_text())["sampling"]["notes"]
    assert any("held other weights" in n for n in notes)


def test_truncated_tokenizer_beside_the_weights_is_one_line(stages, tmp_path):
    model = tmp_path / "merged"
    shutil.copytree(stages / "s2" / "merged", model)
    tj = model / "tokenizer.json"
    tj.write_text(tj.read_text()[:200])
    r = runner.invoke(app, ["sample", "--model", str(model), "--task-name", "Family", "--label", "Cyclin_N", "-n",
                            "1", "--out", str(tmp_path / "g.fasta")])
    one_line_error(r, str(tj), "not valid JSON")
    assert not (tmp_path / "g.fasta").exists()
