"""Clear one-line errors of the protein commands: a model folder that does not exist, a hub id on an
offline machine (no retries), a truncated weights file, a FASTA file without a header."""

import time

import pytest
import tiny_models
from typer.testing import CliRunner

from adaptome.domains.protein.cli import app
from adaptome.domains.protein.model import looks_like_path

runner = CliRunner()


def _one_error_line(output: str) -> str:
    errors = [ln for ln in output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in output, output
    return errors[0]


@pytest.mark.parametrize("arg, is_path", [("runs/protein/stage2/merged", True), ("./merged", True),
                                          ("~/models/esm", True), ("/abs/folder", True), ("a\\b", True),
                                          ("facebook/esm2_t6_8M_UR50D", False), ("gpt2", False),
                                          ("org/name with space", True)])
def test_only_a_bare_hub_id_goes_to_the_hub(arg, is_path):
    assert looks_like_path(arg) is is_path


def test_missing_model_folder_is_one_line_for_every_command(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "q.fa").write_text(">q\nMKV\n")
    (tmp_path / "l.txt").write_text("a\nb\n")
    missing = "runs/protein/stage2_tiny/merged"
    for args in (["sample", "--out", "g.fa"], ["score-mutations", "--out", "m.csv"],
                 ["classify", "--fasta", "q.fa", "--labels", "l.txt", "--out", "p.csv"],
                 ["evaluate", "--out", "rep"]):
        r = runner.invoke(app, args[:1] + ["--model", missing] + args[1:])
        assert r.exit_code == 2, r.output
        assert _one_error_line(r.output) == f"error: model folder not found: {missing}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["l.txt", "q.fa"]  # nothing written


def test_hub_id_on_an_offline_machine_fails_at_once(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    r = runner.invoke(app, ["score-mutations", "--model", "someorg/no-such-model", "--out", "m.csv"])
    assert r.exit_code == 2
    line = _one_error_line(r.output)
    assert "someorg/no-such-model" in line and "offline (HF_HUB_OFFLINE is set)" in line
    # no network: a hub host that refuses the connection is reported as offline, without retries
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    t0 = time.perf_counter()
    r = runner.invoke(app, ["score-mutations", "--model", "someorg/no-such-model", "--out", "m.csv"])
    assert r.exit_code == 2 and time.perf_counter() - t0 < 10
    assert "offline (127.0.0.1 does not answer)" in _one_error_line(r.output)


def test_truncated_safetensors_is_one_line_naming_the_file(tmp_path):
    folder = tmp_path / "esm"
    tiny_models.esm_checkpoint(folder)
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    r = runner.invoke(app, ["score-mutations", "--model", str(folder), "--out", str(tmp_path / "m.csv")])
    assert r.exit_code == 2
    line = _one_error_line(r.output)
    assert str(weights) in line and "truncated" in line
    assert not (tmp_path / "m.csv").exists()
    weights.write_bytes(b"\x00" * 4)  # shorter than the 8-byte header length
    r = runner.invoke(app, ["score-mutations", "--model", str(folder), "--out", str(tmp_path / "m.csv")])
    assert r.exit_code == 2 and str(weights) in _one_error_line(r.output)


def test_fasta_without_header_is_the_projects_one_line_message(tmp_path):
    bad = tmp_path / "seqs.fa"
    bad.write_text("\nMKRVLAACDE\nGHIK\n")
    (tmp_path / "l.csv").write_text("id,label\na,x\n")
    r = runner.invoke(app, ["build-dataset", "--fasta", str(bad), "--labels", str(tmp_path / "l.csv"),
                            "--out", str(tmp_path / "ds")])
    assert r.exit_code == 2
    assert _one_error_line(r.output) == (f"error: {bad}: not FASTA: line 2 should be a '>' header line, "
                                         "got 'MKRVLAACDE'")
    assert not (tmp_path / "ds").exists()
