"""User-style audit of the protein inputs, through the CLI: ``build-dataset --max-residues`` crops that must not
teach a false protein end, option combinations that would silently ignore the user's files, an empty label
cell, and ``pretrain`` on what ``build-dataset`` accepts (a byte-order mark, residue_policy=skip). Each case
either does what the options say or stops with one line naming the file (and line) before anything is written."""

import json

from typer.testing import CliRunner

from adaptome.domains.protein.cli import app
from adaptome.domains.protein.data import data_dir

runner = CliRunner()
SHORT, LONG = "MKTAYIAKQRQISFVKSHFSRQLEERLGLI", "MKVLAAGHTW" * 8  # 30 and 80 residues
TINY = ["--set", "train.max_steps=1", "--set", "train.batch_size=2", "--set", "train.progress=false",
        "--set", "model.hidden_size=32", "--set", "model.intermediate_size=64", "--set", "model.num_layers=1",
        "--set", "model.num_heads=2"]


def _one_error_line(output: str) -> str:
    errors = [ln for ln in output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in output, output
    return errors[0]


def _inputs(tmp_path, labels="id,label\na,F1\nb,F1\nc,F2\nd,F2\n"):
    (tmp_path / "seqs.fa").write_text(f">a\n{SHORT}\n>b\n{LONG}\n>c\n{SHORT}\n>d\n{LONG}\n")
    (tmp_path / "labels.csv").write_text(labels)
    return ["--fasta", str(tmp_path / "seqs.fa"), "--labels", str(tmp_path / "labels.csv")]


def test_max_residues_crops_leave_generation_answers_open(tmp_path):
    r = runner.invoke(app, ["build-dataset", *_inputs(tmp_path), "--max-residues", "50", "--out", str(tmp_path / "ds")])
    assert r.exit_code == 0, r.output
    assert "cropped 4 of 8 records (2 of 4 proteins) to fit 256 tokens and 50 residues" in r.output, r.output
    recs = [json.loads(ln) for ln in (tmp_path / "ds" / "instructions.jsonl").read_text().splitlines()]
    gen = [x["output"] for x in recs if x["instruction"].startswith("[Generate")]
    det = [x["input"] for x in recs if x["instruction"].startswith("[Determine")]
    assert gen == [f"Seq=<{SHORT}>", f"Seq=<{LONG[:50]}"] * 2  # a cropped answer stays open: no false end
    assert det == [f"Seq=<{SHORT}>", f"Seq=<{LONG[:50]}>"] * 2  # an understanding input stays closed
    # the stage-1 files stay whole
    assert (tmp_path / "ds" / "sequences.txt").read_text().split() == [f"Seq=<{s}>" for s in (SHORT, LONG) * 2]
    # stage 2 records only whole answers as label lengths (sample --length-prior draws from them)
    r = runner.invoke(app, ["instruct", "-c", str(data_dir().parent / "configs" / "instruct_tiny.yaml"), "--set",
                            f"train_files=[{tmp_path / 'ds' / 'instructions.jsonl'}]", "--set",
                            f"train.output_dir={tmp_path / 's2'}", *TINY])
    assert r.exit_code == 0, r.output
    info = json.loads((tmp_path / "s2" / "merged" / "training_data.json").read_text())
    assert info["label_lengths"] == {"Superfamily": {"F1": [30], "F2": [30]}}


def test_max_residues_below_one_is_refused(tmp_path):
    for value in ("0", "-3"):
        r = runner.invoke(app, ["build-dataset", *_inputs(tmp_path), "--max-residues", value,
                                "--out", str(tmp_path / "ds")])
        assert r.exit_code == 2 and f"--max-residues {value}: must be at least 1" in _one_error_line(r.output)
        assert not (tmp_path / "ds").exists()


def test_shipped_data_with_the_users_files_is_refused(tmp_path):
    files = _inputs(tmp_path)
    for extra, named in ((files, "--fasta/--labels"), (["--vocab", "superfamilies"], "--vocab")):
        r = runner.invoke(app, ["build-dataset", "--shipped", "pfam", *extra, "--out", str(tmp_path / "ds")])
        line = _one_error_line(r.output)
        assert r.exit_code == 2 and "--shipped pfam" in line and named in line, r.output
        assert not (tmp_path / "ds").exists()


def test_an_empty_label_cell_is_refused_with_its_line(tmp_path):
    r = runner.invoke(app, ["build-dataset", *_inputs(tmp_path, "id,label\na,F1\nb,\nc,F1\nd,F2\n"),
                            "--out", str(tmp_path / "ds")])
    line = _one_error_line(r.output)
    assert r.exit_code == 2 and f"{tmp_path / 'labels.csv'}:3" in line and "'b'" in line and "empty" in line, r.output
    assert not (tmp_path / "ds").exists()


def test_pretrain_reads_a_bom_fasta_and_counts_what_skip_leaves_out(tmp_path):
    fasta = tmp_path / "bom.fa"
    fasta.write_text(f">sp|P1|A\n{LONG}\n>sp|P2|B\n{SHORT}X{SHORT}\n>sp|P3|C\n{LONG}\n", encoding="utf-8-sig")
    cfg = str(data_dir().parent / "configs" / "pretrain_tiny.yaml")
    r = runner.invoke(app, ["build-dataset", "--fasta", str(fasta), "--labels", str(_write_labels(tmp_path)),
                            "--policy", "skip", "--out", str(tmp_path / "ds")])
    assert r.exit_code == 0 and "1 record(s)" in r.output, r.output
    r = runner.invoke(app, ["pretrain", "-c", cfg, "--set", f"train_files=[{fasta}]", "--set", "residue_policy=skip",
                            "--set", "block_size=32", "--set", f"train.output_dir={tmp_path / 's1'}", *TINY])
    assert r.exit_code == 0, r.output
    assert "1 sequence(s) with non-standard residues skipped" in r.output and "'sp|P2|B'" in r.output, r.output
    info = json.loads((tmp_path / "s1" / "merged" / "training_data.json").read_text())
    assert info["sequence_lengths"]["n"] == 2
    # a policy that leaves nothing is one line, before anything is written
    (tmp_path / "all_x.fa").write_text(">a\nMKXV\n>b\nBBB\n")
    r = runner.invoke(app, ["pretrain", "-c", cfg, "--set", f"train_files=[{tmp_path / 'all_x.fa'}]",
                            "--set", "residue_policy=skip", "--set", f"train.output_dir={tmp_path / 's0'}", *TINY])
    assert r.exit_code == 2 and "left out all 2 sequences" in _one_error_line(r.output)
    assert not (tmp_path / "s0").exists()


def _write_labels(tmp_path):
    path = tmp_path / "bom_labels.csv"
    path.write_text("id,label\nsp|P1|A,F1\nsp|P2|B,F1\nsp|P3|C,F2\n")
    return path


def test_seq_text_and_instructions_with_a_bom_are_read_and_other_bytes_name_the_line(tmp_path):
    """An editor's byte-order mark on a ``Seq=<`` text file (stage 1) or an instruction file (stage 2) is read as
    the same text; a byte that is not UTF-8 is one line naming the file and the line, before anything is written."""
    cfg1 = str(data_dir().parent / "configs" / "pretrain_tiny.yaml")
    seqs = tmp_path / "bom.txt"
    seqs.write_text(f"Seq=<{LONG}>\r\nSeq=<{SHORT}>\r\n", encoding="utf-8-sig")
    r = runner.invoke(app, ["pretrain", "-c", cfg1, "--set", f"train_files=[{seqs}]", "--set", "block_size=32",
                            "--set", f"train.output_dir={tmp_path / 's1'}", *TINY])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "s1" / "merged" / "training_data.json").read_text())["sequence_lengths"]["n"] == 2
    ds = tmp_path / "ds"
    assert runner.invoke(app, ["build-dataset", *_inputs(tmp_path), "--out", str(ds)]).exit_code == 0
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b"\xef\xbb\xbf" + (ds / "instructions.jsonl").read_bytes())
    cfg2 = str(data_dir().parent / "configs" / "instruct_tiny.yaml")
    r = runner.invoke(app, ["instruct", "-c", cfg2, "--set", f"train_files=[{bom}]",
                            "--set", f"train.output_dir={tmp_path / 's2'}", *TINY])
    assert r.exit_code == 0, r.output
    latin = tmp_path / "latin1.txt"
    latin.write_bytes(f"Seq=<{SHORT}>\nSeq=<{SHORT}> caf\xe9\n".encode("latin-1"))
    r = runner.invoke(app, ["pretrain", "-c", cfg1, "--set", f"train_files=[{latin}]",
                            "--set", f"train.output_dir={tmp_path / 's0'}", *TINY])
    line = _one_error_line(r.output)
    assert r.exit_code == 2 and f"{latin}:2: not UTF-8" in line, r.output
    assert not (tmp_path / "s0").exists()
