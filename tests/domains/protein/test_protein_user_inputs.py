"""Inputs a user brings from elsewhere, through the CLI: deep-mutational-scan tables with missing fitness
values, mutants the scorer cannot apply (a position twice, indels, a wrong numbering), label tables with
conflicting or duplicated ids, residue policies. Each case either does what the options say or stops with
one line naming the file (and line) before anything is written."""

import csv
import re

import pytest
import tiny_models
from Bio.Align import substitution_matrices
from scipy.stats import spearmanr
from typer.testing import CliRunner

from adaptome.domains.protein.cli import app

runner = CliRunner()
WT = "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQ"  # position p (1-based) is WT[p - 1]


@pytest.fixture(scope="module")
def esm_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_esm_inputs")
    tiny_models.esm_checkpoint(folder)
    return folder


def _score(esm_dir, tmp_path, rows, *extra):
    (tmp_path / "m.csv").write_text("mutant,fit\n" + "".join(f"{m},{f}\n" for m, f in rows))
    return runner.invoke(app, ["score-mutations", "--model", str(esm_dir), "--mutants", str(tmp_path / "m.csv"),
                               "--wildtype", WT, "--offset", "1", "--out", str(tmp_path / "s.csv"), *extra])


def test_missing_fitness_is_left_out_of_both_spearman_correlations_and_counted(esm_dir, tmp_path):
    rows = [("M1A", "0.5"), ("K2E", ""), ("T3W", "-1.2"), ("A4G", "nan"), ("Y5F", "0.9"), ("I6P", "-2.0"),
            ("K8R:Q9E", "0.1")]
    r = _score(esm_dir, tmp_path, rows, "--fitness-column", "fit")
    assert r.exit_code == 0, r.output
    out = list(csv.DictReader((tmp_path / "s.csv").open()))
    assert [o["mutant"] for o in out] == [m for m, _ in rows]  # every mutant scored, in order
    assert [o["fitness"] for o in out] == ["0.5", "", "-1.2", "", "0.9", "-2.0", "0.1"]
    keep = [i for i, (_, f) in enumerate(rows) if f not in ("", "nan")]
    fit = [float(rows[i][1]) for i in keep]
    b62 = substitution_matrices.load("BLOSUM62")
    blosum = [sum(b62[c[0]][c[-1]] for c in rows[i][0].split(":")) for i in keep]
    model = [float(out[i]["score"]) for i in keep]
    m = re.search(r"model (-?[\d.]+), BLOSUM62 baseline (-?[\d.]+) \(same 5 of 7 mutants; left out of both: "
                  r"2 without a fitness value\)", r.output)
    assert m, r.output
    assert float(m.group(1)) == pytest.approx(spearmanr(model, fit)[0], abs=6e-4)
    assert float(m.group(2)) == pytest.approx(spearmanr(blosum, fit)[0], abs=6e-4)


@pytest.mark.parametrize("bad, why", [("K2E:K2W", "position 2 is mutated twice"),
                                      ("K2del", "insertions and deletions are not supported"),
                                      ("K2_T3insA", "insertions and deletions are not supported")])
def test_unappliable_mutant_is_one_line_naming_file_and_line(esm_dir, tmp_path, bad, why):
    r = _score(esm_dir, tmp_path, [("M1A", "0"), (bad, "1")])
    assert r.exit_code == 2, r.output
    assert f"m.csv:3: mutant {bad!r}: {why}" in r.output
    assert "Traceback" not in r.output and not (tmp_path / "s.csv").exists()


def test_one_based_list_with_the_default_offset_names_the_line_and_the_offset_that_fits(esm_dir, tmp_path):
    (tmp_path / "m.csv").write_text("mutant\nM1A\nK2E\nY5F\n")
    r = runner.invoke(app, ["score-mutations", "--model", str(esm_dir), "--mutants", str(tmp_path / "m.csv"),
                            "--wildtype", WT, "--out", str(tmp_path / "s.csv")])
    assert r.exit_code == 2, r.output
    assert "m.csv:2: mutant 'M1A'" in r.output and "all 3 mutants match with --offset 1" in r.output
    assert not (tmp_path / "s.csv").exists()


def _build(tmp_path, fasta_text, table_text, *extra, name="t.csv"):
    (tmp_path / "s.fa").write_text(fasta_text)
    (tmp_path / name).write_text(table_text, encoding="utf-8-sig" if name == "bom.csv" else "utf-8")
    return runner.invoke(app, ["build-dataset", "--fasta", str(tmp_path / "s.fa"), "--labels", str(tmp_path / name),
                               "--out", str(tmp_path / "ds"), *extra])


FASTA = ">a1\nMKTAYIAKQR\n>a2\nGLIEVQSHFS\n>b1\nWWKKLLPPAA\n"


def _labels_written(tmp_path):
    heads = [ln for ln in (tmp_path / "ds" / "sequences.fasta").read_text().splitlines() if ln.startswith(">")]
    return dict(re.match(r">(\S+) Superfamily=<(.*)>", h).groups() for h in heads)


def test_label_table_with_one_id_given_two_labels_is_refused(tmp_path):
    r = _build(tmp_path, FASTA, "id,label\na1,A\na2,A\nb1,B\na1,B\n")
    assert r.exit_code == 2, r.output
    assert "t.csv:5: id 'a1' has label 'B', but 'A' on line 2" in r.output
    assert not (tmp_path / "ds").exists()
    r = _build(tmp_path, FASTA, "id,label\na1,A\na2,A\nb1,B\na1,A\n")  # a repeated identical row is harmless
    assert r.exit_code == 0, r.output
    assert _labels_written(tmp_path) == {"a1": "A", "a2": "A", "b1": "B"}


def test_duplicate_sequence_ids_labelled_by_a_table_are_refused(tmp_path):
    r = _build(tmp_path, FASTA + ">a1\nCCCCDDDDEE\n", "id,label\na1,A\na2,A\nb1,B\n")
    assert r.exit_code == 2, r.output
    assert "s.fa: record id 'a1' occurs more than once" in r.output
    assert not (tmp_path / "ds").exists()


def test_spreadsheet_byte_order_mark_and_padded_cells_in_the_label_table(tmp_path):
    r = _build(tmp_path, FASTA, "id,label\r\na1 , A\r\na2,A\r\nb1,B\r\n", name="bom.csv")
    assert r.exit_code == 0, r.output
    assert _labels_written(tmp_path) == {"a1": "A", "a2": "A", "b1": "B"}


def test_unknown_residue_policy_is_refused(tmp_path):
    r = _build(tmp_path, FASTA, "id,label\na1,A\na2,A\nb1,B\n", "--policy", "drop")
    assert r.exit_code == 2, r.output
    assert "residue policy 'drop': known: error, skip, keep" in r.output


def test_skip_policy_says_how_many_records_it_left_out_and_refuses_to_leave_none(tmp_path):
    table = "id,label\na1,A\na2,A\nb1,B\n"
    r = _build(tmp_path, ">a1\nMKTAYXAKQR\n>a2\nGLIEVQSHFS\n>b1\nWWKKLLPPAA\n", table, "--policy", "skip")
    assert r.exit_code == 0, r.output
    assert "1 record(s) with non-standard residues skipped (--policy skip), e.g. 'a1'" in r.output
    assert _labels_written(tmp_path) == {"a2": "A", "b1": "B"}
    (tmp_path / "x.fa").write_text(">a1\nMKXAY\n>a2\nBBQQ\n")
    r = runner.invoke(app, ["build-dataset", "--fasta", str(tmp_path / "x.fa"), "--labels", str(tmp_path / "t.csv"),
                            "--policy", "skip", "--out", str(tmp_path / "ds3")])
    assert r.exit_code == 2, r.output
    assert "--fasta: no record left to use (--policy skip)" in r.output and not (tmp_path / "ds3").exists()


def test_esm_test_labels_are_checked_before_any_training(esm_dir, tmp_path):
    (tmp_path / "tr.fa").write_text(">t1\nMKTAYIAK\n>t2\nWWKKLLPP\n")
    (tmp_path / "tr.csv").write_text("id,label\nt1,A\nt2,B\n")
    (tmp_path / "q.fa").write_text(">q1\nMKTAYIAK\n>q2\nWWKKLLPP\n")
    (tmp_path / "q.csv").write_text("id,label\nq1,A\n")
    r = runner.invoke(app, ["classify", "--model", str(esm_dir), "--train-fasta", str(tmp_path / "tr.fa"),
                            "--train-labels", str(tmp_path / "tr.csv"), "--fasta", str(tmp_path / "q.fa"),
                            "--test-labels", str(tmp_path / "q.csv"), "--set", f"train.output_dir={tmp_path / 'run'}",
                            "--out", str(tmp_path / "p.csv")])
    assert r.exit_code == 2, r.output
    assert "q.csv: no label for 1 record(s), e.g. 'q2'" in r.output
    assert not (tmp_path / "run").exists() and not (tmp_path / "p.csv").exists()


def test_saved_esm_classifier_predicts_with_the_crop_it_was_trained_with(esm_dir, tmp_path):
    """Trained on 6-residue crops whose letters carry the class; the tails say the opposite. Reused
    through ``--model .../merged`` it must crop as in training, not at the shipped config's 1,022."""
    import torch

    from adaptome.domains.protein import esm_classify

    g = torch.Generator().manual_seed(0)
    base = "ACDEFGHILMNPQRSTVY"
    for name, n in (("tr", 24), ("q", 10)):
        recs = []
        for i in range(n):
            a = i % 2 == 0
            rnd = [base[int(j)] for j in torch.randint(len(base), (26,), generator=g)]
            head = ["W" if a else "K"] * 3 + rnd[:3]
            tail = ["K" if a else "W"] * 14 + rnd[3:9]
            recs.append((f"{name}{i}", "".join(head + tail), "a" if a else "b"))
        (tmp_path / f"{name}.fa").write_text("".join(f">{i}\n{s}\n" for i, s, _ in recs))
        (tmp_path / f"{name}.csv").write_text("id,label\n" + "".join(f"{i},{lab}\n" for i, _, lab in recs))
    run = tmp_path / "run"
    r = runner.invoke(app, ["classify", "--model", str(esm_dir), "--train-fasta", str(tmp_path / "tr.fa"),
                            "--train-labels", str(tmp_path / "tr.csv"), "--fasta", str(tmp_path / "q.fa"),
                            "--out", str(tmp_path / "p.csv"), "--set", f"train.output_dir={run}",
                            "--set", "max_residues=6", "--set", "train.max_steps=30", "--set", "train.lr=1e-2",
                            "--set", "train.progress=false"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["classify", "--model", str(run / "merged"), "--fasta", str(tmp_path / "q.fa"),
                            "--out", str(tmp_path / "p2.csv")])
    assert r.exit_code == 0, r.output
    assert "queries cropped to 6 residues (as the classifier was trained)" in r.output
    reused = [row["prediction"] for row in csv.DictReader((tmp_path / "p2.csv").open())]
    model, tok = esm_classify.load_classifier(str(run / "merged"), ["a", "b"])
    seqs = [ln for ln in (tmp_path / "q.fa").read_text().splitlines() if not ln.startswith(">")]
    at6 = [p["pred"] for p in esm_classify.predict(model, tok, seqs, ["a", "b"], max_residues=6)]
    whole = [p["pred"] for p in esm_classify.predict(model, tok, seqs, ["a", "b"], max_residues=1022)]
    assert reused == at6 == [row["prediction"] for row in csv.DictReader((tmp_path / "p.csv").open())]
    assert at6 != whole  # the crop matters here, so reusing the wrong one would show


def _tiny_llama(folder):
    from adaptome.domains.protein.model import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(None, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def _two_families(odd_row: str = "") -> str:
    """A Pfam-A.seed-style text: two alignments (FamW, FamK) of 8 sequences each, plus ``odd_row`` in FamW."""
    import torch

    g = torch.Generator().manual_seed(0)
    blocks = []
    for fam, rich in (("FamW", "W"), ("FamK", "K")):
        rows = []
        for i in range(8):
            rnd = "".join("ACDEFGHILMNPQRSTVY"[int(j)] for j in torch.randint(18, (10,), generator=g))
            rows.append(f"{fam}_{i}/1-16 {rnd[:5]}-{rich * 6}.{rnd[5:]}")
        if odd_row and fam == "FamW":
            rows.append(odd_row)
        blocks.append(f"# STOCKHOLM 1.0\n#=GF ID   {fam}\n#=GF AC   PF0000{len(blocks)}.1\n" + "\n".join(rows)
                      + "\n//\n")
    return "".join(blocks)


def _evaluate(tmp_path, ref, *extra):
    import json

    r = runner.invoke(app, ["evaluate", "--model", str(_tiny_llama(tmp_path / "m")), "--reference", str(ref),
                            "--out", str(tmp_path / "rep"), *extra])
    rep = json.loads((tmp_path / "rep" / "report.json").read_text())["classification"] if r.exit_code == 0 else None
    return r, rep


def test_evaluate_reads_every_alignment_of_a_multi_family_stockholm_reference(tmp_path):
    """A Pfam-A.seed-style file holds several alignments; ``--reference`` takes each, labelled by its ID."""
    (tmp_path / "two.seed").write_text(_two_families())
    r, rep = _evaluate(tmp_path, tmp_path / "two.seed")
    assert r.exit_code == 0, r.output
    assert rep["n_classes"] == 2 and rep["n_test"] == 6  # 3 held out per label, from both alignments


def test_stockholm_saved_with_a_byte_order_mark_and_windows_line_endings_reads_as_the_plain_file(tmp_path):
    """An editor's byte-order mark hid the '# STOCKHOLM 1.0' line from Biopython: the file was refused."""
    from adaptome.domains.protein.formats import read_sequences

    (tmp_path / "plain.seed").write_text(_two_families())
    (tmp_path / "bom.seed").write_bytes(b"\xef\xbb\xbf" + _two_families().replace("\n", "\r\n").encode())
    assert read_sequences(tmp_path / "bom.seed") == read_sequences(tmp_path / "plain.seed")
    r, rep = _evaluate(tmp_path, tmp_path / "bom.seed")
    assert r.exit_code == 0, r.output
    assert rep["n_classes"] == 2 and rep["n_test"] == 6


def test_evaluate_policy_applies_to_the_reference_and_says_what_it_skipped(tmp_path):
    """``evaluate``'s residue error told the user to use a policy that evaluate did not have."""
    (tmp_path / "x.seed").write_text(_two_families("FamW_x/1-16 ACDEX-WWWWWW.GHIKL"))
    r, _ = _evaluate(tmp_path, tmp_path / "x.seed")
    assert r.exit_code == 2 and "non-standard residue 'X' at position 5" in r.output, r.output
    r, rep = _evaluate(tmp_path, tmp_path / "x.seed", "--policy", "skip")
    assert r.exit_code == 0, r.output
    assert "--reference: 1 record(s) with non-standard residues skipped (--policy skip), e.g. 'FamW_x/1-16'" \
        in r.output
    assert rep["n_test"] == 6
    r = runner.invoke(app, ["evaluate", "--model", str(tmp_path / "m"), "--policy", "skip", "--out",
                            str(tmp_path / "rep2")])
    assert r.exit_code == 2 and "--policy applies to --reference files" in r.output, r.output


def test_wildtype_file_of_several_records_says_which_one_is_the_wild_type(esm_dir, tmp_path):
    """A DMS download often ships every variant in one FASTA; the first record is taken, and said."""
    (tmp_path / "wt.fa").write_text(f">wt first\n{WT}\n>K2E variant\nME{WT[2:]}\n")
    (tmp_path / "m.csv").write_text("mutant\nK2E\n")
    r = runner.invoke(app, ["score-mutations", "--model", str(esm_dir), "--mutants", str(tmp_path / "m.csv"),
                            "--wildtype", str(tmp_path / "wt.fa"), "--offset", "1", "--out", str(tmp_path / "s.csv")])
    assert r.exit_code == 0, r.output  # K2E applies to the first record (K at 2), not the second (E at 2)
    assert f"wt.fa holds 2 records; the first, 'wt' ({len(WT)} residues), is the wild type" in r.output


def test_fasta_with_a_byte_order_mark_and_windows_line_endings_reads_as_the_plain_file(tmp_path):
    table = "id,label\na1,A\na2,A\nb1,B\n"
    (tmp_path / "s.fa").write_bytes(b"\xef\xbb\xbf" + FASTA.replace("\n", "\r\n").encode())
    (tmp_path / "t.csv").write_text(table)
    r = runner.invoke(app, ["build-dataset", "--fasta", str(tmp_path / "s.fa"), "--labels", str(tmp_path / "t.csv"),
                            "--out", str(tmp_path / "ds")])
    assert r.exit_code == 0, r.output
    plain = tmp_path / "plain"
    plain.mkdir()
    r = _build(plain, FASTA, table)
    assert r.exit_code == 0, r.output
    assert (tmp_path / "ds" / "sequences.fasta").read_text() == (plain / "ds" / "sequences.fasta").read_text()


def test_classify_says_when_query_labels_lie_outside_the_candidates_or_cover_only_some_records(tmp_path):
    """Labels of a held-out set that the training set never had (a new family) make every accuracy
    lower; the run says so, and a partly labelled query set says why no accuracy is printed."""
    from adaptome.domains.protein.model import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(None, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2)
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    train = [(f"t{i}", "A" if i % 2 else "B", ("MKWK" if i % 2 else "MEYE") + "ACDEFGHIK"[i] + "LL") for i in range(8)]
    (tmp_path / "tr.fa").write_text("".join(f">{i} Superfamily=<{lab}>\n{seq}\n" for i, lab, seq in train))
    (tmp_path / "q.fa").write_text(">q1 Superfamily=<A>\nMKWKALL\n>q2 Superfamily=<C>\nMEYECLL\n"
                                   ">q3 Superfamily=<C>\nMEYEDLL\n")
    args = ["classify", "--model", str(tmp_path / "m"), "--train", str(tmp_path / "tr.fa"), "--method", "determine"]
    r = runner.invoke(app, args + ["--fasta", str(tmp_path / "q.fa"), "--out", str(tmp_path / "p.csv")])
    assert r.exit_code == 0, r.output
    assert "accuracy on 3 sequences" in r.output
    assert "warning: 2 query record(s) carry a label outside the candidates (C)" in r.output
    (tmp_path / "q2.fa").write_text(">q1 Superfamily=<A>\nMKWKALL\n>q2\nMEYECLL\n")
    r = runner.invoke(app, args + ["--fasta", str(tmp_path / "q2.fa"), "--out", str(tmp_path / "p2.csv")])
    assert r.exit_code == 0, r.output
    assert "note: only 1 of 2 query records carry a label: no accuracy computed" in r.output
