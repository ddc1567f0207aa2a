"""Stockholm (Pfam seed) files are read wherever FASTA is: by extension or content, gaps removed,
labelled by the family's ``#=GF ID`` (or ``AC``), through Biopython's Stockholm reader."""

import shutil

import pytest
from typer.testing import CliRunner

from adaptome.domains.protein import data, formats
from adaptome.domains.protein.cli import app
from adaptome.domains.protein.formats import FormatError

runner = CliRunner()
PFAM = data.data_dir() / "pfam"
TWO = """# STOCKHOLM 1.0
#=GF ID   FamA
#=GF AC   PF00001.1
a1/1-4    MK-V.
a2/1-5    MK.VL
//
# STOCKHOLM 1.0
#=GF ID   FamB
#=GF AC   PF00002.3
b1/1-3    acd
//
"""


def test_stockholm_detected_by_extension_or_content_gaps_removed_labels_from_gf(tmp_path):
    (tmp_path / "two.sto").write_text(TWO)
    (tmp_path / "two.txt").write_text(TWO)  # by content
    for name in ("two.sto", "two.txt"):
        recs = formats.read_sequences(tmp_path / name)
        assert [(r.id, r.seq, r.label) for r in recs] == [("a1/1-4", "MKV", "FamA"), ("a2/1-5", "MKVL", "FamA"),
                                                           ("b1/1-3", "ACD", "FamB")]
    assert [r.label for r in formats.read_sequences(tmp_path / "two.sto", stockholm_label="ac")] == [
        "PF00001.1", "PF00001.1", "PF00002.3"]
    fams = formats.read_stockholm_families(tmp_path / "two.sto")
    assert [(f.id, f.accession) for f in fams] == [("FamA", "PF00001.1"), ("FamB", "PF00002.3")]
    with pytest.raises(FormatError, match="two.sto: 2 alignments; expected one"):
        formats.read_stockholm(tmp_path / "two.sto")
    # a shipped Pfam seed: the same records as the single-alignment reader
    fam = formats.read_stockholm(PFAM / "pfam8.seed.txt")
    recs = formats.read_sequences(PFAM / "pfam8.seed.txt")
    assert [(r.id, r.seq) for r in recs] == [(r.id, r.seq) for r in fam.records]
    assert {r.label for r in recs} == {"Cyclin_N"} and len(recs) == 95
    # FASTA stays FASTA; a Key=<label> header field labels the record
    (tmp_path / "x.fa").write_text(">q1 Family=<FamA>\nMKV\n>q2\nACD\n")
    assert [(r.id, r.label) for r in formats.read_sequences(tmp_path / "x.fa", key="Family")] == [
        ("q1", "FamA"), ("q2", None)]


def test_bad_stockholm_is_one_error_naming_the_file(tmp_path):
    (tmp_path / "bad.sto").write_text("# STOCKHOLM 1.0\nonlyname\n//\n")
    with pytest.raises(FormatError, match="bad.sto: not a Stockholm alignment"):
        formats.read_sequences(tmp_path / "bad.sto")
    (tmp_path / "noac.sto").write_text("# STOCKHOLM 1.0\n#=GF ID X\na MKV\n//\n")
    with pytest.raises(FormatError, match="noac.sto: alignment 1 has no '#=GF AC' line"):
        formats.read_sequences(tmp_path / "noac.sto", stockholm_label="ac")
    r = runner.invoke(app, ["build-dataset", "--fasta", str(tmp_path / "bad.sto"), "--out", str(tmp_path / "ds")])
    assert r.exit_code == 2 and "bad.sto: not a Stockholm alignment" in r.output
    assert not (tmp_path / "ds").exists()


def test_stockholm_and_fasta_of_the_same_sequences_give_the_same_dataset(tmp_path):
    """Pfam seeds as Stockholm (one by extension, one by content) vs the same sequences as FASTA + table."""
    sto = [tmp_path / "hsd.seed", tmp_path / "cox2.txt"]
    shutil.copy(PFAM / "pfam4.seed.txt", sto[0])
    shutil.copy(PFAM / "pfam6.seed.txt", sto[1])
    recs = [r for p in sto for r in formats.read_stockholm(p).records]
    formats.write_fasta(((r.id, r.seq) for r in recs), tmp_path / "same.fa")
    (tmp_path / "labels.csv").write_text("id,label\n" + "".join(f"{r.id},{r.label}\n" for r in recs))
    common = ["--task-name", "family", "--max-seq-length", "120"]
    a = runner.invoke(app, ["build-dataset", "--fasta", str(sto[0]), "--fasta", str(sto[1]), *common,
                            "--out", str(tmp_path / "from_sto")])
    b = runner.invoke(app, ["build-dataset", "--fasta", str(tmp_path / "same.fa"), "--labels",
                            str(tmp_path / "labels.csv"), *common, "--out", str(tmp_path / "from_fa")])
    assert a.exit_code == 0 and b.exit_code == 0, a.output + b.output
    for name in ("instructions.jsonl", "sequences.txt", "sequences.fasta"):
        assert (tmp_path / "from_sto" / name).read_text() == (tmp_path / "from_fa" / name).read_text()
    lines = (tmp_path / "from_sto" / "instructions.jsonl").read_text().splitlines()
    assert len(lines) == 2 * (8 + 11) and "Family=<COX2_TM>" in lines[-1]
    assert "19 sequences, 2 labels" in a.output and "of 38 records (19 of 19 proteins)" in a.output
    # FASTA without labels and no table: a clear error
    r = runner.invoke(app, ["build-dataset", "--fasta", str(tmp_path / "same.fa"), "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "has no label" in r.output


def test_stage1_reads_stockholm_beside_fasta(tmp_path):
    from adaptome.domains.protein.pretrain import load_sequences

    (tmp_path / "two.sto").write_text(TWO)
    (tmp_path / "x.fa").write_text(">q\nWW\n")
    assert load_sequences([str(tmp_path / "two.sto"), str(tmp_path / "x.fa")]) == ["MKV", "MKVL", "ACD", "WW"]
