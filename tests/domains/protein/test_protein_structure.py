"""Structure metrics: ESMFold pLDDT through transformers on a tiny folding model built from config,
PDB output read back with Biopython, Foldseek TM-score when the command exists, and the notes
when a metric cannot run."""

import math
import shutil

import pytest
import torch

from adaptome.domains.protein import structure

SEQS = ["MKTAYIAKQR", "GAVLIWE"]


def test_plddt_is_the_mean_ca_plddt_and_pdbs_parse(tiny_esmfold, tmp_path):
    from Bio.PDB import PDBParser
    from transformers.models.esm.openfold_utils import residue_constants

    model = structure.load_esmfold(str(tiny_esmfold))
    scores = structure.esmfold_plddt(model, SEQS, pdb_dir=tmp_path, names=["a", "b"])
    for seq, score in zip(SEQS, scores):
        # the model's own input: residues as indices of AlphaFold's residue order
        aatype = torch.tensor([[residue_constants.restypes_with_x.index(c) for c in seq]])  # (1, L)
        with torch.no_grad():
            want = model(aatype).plddt[0, :, 1].mean().item() * 100  # C-alpha column, 0-100
        assert score == pytest.approx(want, rel=1e-5) and 0 <= score <= 100
    for name, seq in zip(["a", "b"], SEQS):
        chain = next(PDBParser(QUIET=True).get_structure(name, tmp_path / f"{name}.pdb").get_chains())
        residues = list(chain)
        assert len(residues) == len(seq) and all("CA" in r for r in residues)


def test_report_runs_esmfold_and_notes_what_cannot_run(tiny_esmfold, tmp_path):
    rep = structure.structure_report(SEQS + [""], ["a", "b", "empty"], esmfold=str(tiny_esmfold),
                                     reference_pdbs=None, pdb_dir=tmp_path / "pdb")
    p = rep["plddt_esmfold"]
    assert p["n"] == 2 and math.isnan(p["per_sequence"]["empty"])
    assert p["mean"] == pytest.approx((p["per_sequence"]["a"] + p["per_sequence"]["b"]) / 2)
    assert rep["tm_score_foldseek"].startswith("skipped: no reference structures")
    notes = structure.structure_report([], [])
    assert notes["plddt_esmfold"].startswith("skipped: no ESMFold model given")
    assert notes["plddt_omegafold"].startswith("skipped")


@pytest.mark.skipif(shutil.which("foldseek") is None, reason="foldseek is not installed here")
def test_foldseek_scores_a_structure_against_itself_near_one(tiny_esmfold, tmp_path):
    model = structure.load_esmfold(str(tiny_esmfold))
    structure.esmfold_plddt(model, ["MKTAYIAKQRQISFVKSHFSRQ"], pdb_dir=tmp_path / "q", names=["q"])
    best = structure.foldseek_tm(tmp_path / "q", tmp_path / "q")
    assert best["q"] == pytest.approx(1.0, abs=0.05)


def test_foldseek_missing_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not on PATH"):
        structure.foldseek_tm(tmp_path, tmp_path, foldseek="foldseek-that-does-not-exist")
