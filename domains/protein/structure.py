"""Structure metrics for generated sequences, run when the model or tool is present.

* **pLDDT through ESMFold** (Lin et al. 2023): ``transformers.EsmForProteinFolding`` loaded from a
  local folder or hub id; for each sequence the mean predicted LDDT of the C-alpha atoms, on the
  0-100 scale ProLLaMA reports (its Table 1 averages pLDDT over generated sets). The predicted
  structures can be written as PDB files.
* **TM-score through Foldseek** (van Kempen et al. 2024): ``foldseek easy-search`` of the predicted
  PDB files against a folder of reference structures with TM-align scoring
  (``--alignment-type 1``); for each query the best ``alntmscore`` over the references.

Neither ships here: ``structure_report`` says which ran and, for the others, why not (no model path
given, the ``foldseek`` command not on PATH). OmegaFold is not wrapped (its package pins its own
stack); it is reported as skipped.

Dimension letters: L residues, A the 37 atom types of ESMFold's atom37 layout (index 1 = CA).
Not covered: batching several sequences in one ESMFold call (sequences run one at a time, so no
padding reaches the folding trunk), chunked attention for long sequences, GPU placement (CPU
unless ``device`` is given).
"""

from __future__ import annotations

import csv
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from adaptome.domains.protein.formats import ProteinError

CA = 1  # atom37 index of the C-alpha atom


def load_esmfold(name_or_path: str, device: str = "cpu"):
    """An ESMFold checkpoint (local folder or hub id) in eval mode. No tokenizer is needed:
    ``EsmForProteinFolding.infer`` maps residues to the model's own (AlphaFold) residue order."""
    from transformers import EsmForProteinFolding

    from adaptome.domains.protein.model import from_pretrained_checked

    return from_pretrained_checked(EsmForProteinFolding, name_or_path).to(device).eval()


def esmfold_plddt(model, seqs: list[str], pdb_dir: str | Path | None = None,
                  names: list[str] | None = None) -> list[float]:
    """Mean C-alpha pLDDT (0-100) per sequence; with ``pdb_dir`` each structure is written as
    ``<name>.pdb`` there. Empty sequences score NaN."""
    import torch

    if pdb_dir is not None:
        Path(pdb_dir).mkdir(parents=True, exist_ok=True)
    names = names or [f"seq{i}" for i in range(len(seqs))]
    out_scores = []
    with torch.no_grad():
        for name, seq in zip(names, seqs):
            if not seq:
                out_scores.append(float("nan"))
                continue
            out = model.infer([seq])
            plddt = out.plddt[0, :, CA]  # (1, L, A) -> (L,): per-residue C-alpha pLDDT in [0, 1]
            out_scores.append(float(plddt.mean()) * 100.0)
            if pdb_dir is not None:
                (Path(pdb_dir) / f"{name}.pdb").write_text(model.output_to_pdb(out)[0])
    return out_scores


def foldseek_tm(query_dir: str | Path, reference_dir: str | Path, foldseek: str = "foldseek",
                threads: int = 1) -> dict[str, float]:
    """Best TM-score of each query structure against the reference structures (Foldseek)."""
    exe = shutil.which(foldseek)
    if exe is None:
        raise FileNotFoundError(f"{foldseek}: not on PATH")
    with tempfile.TemporaryDirectory() as tmp:
        hits = Path(tmp) / "hits.tsv"
        cmd = [exe, "easy-search", str(query_dir), str(reference_dir), str(hits), str(Path(tmp) / "work"),
               "--alignment-type", "1", "--exhaustive-search", "1", "--threads", str(threads),
               "--format-output", "query,target,alntmscore"]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            raise ProteinError(f"foldseek failed ({res.returncode}): {res.stderr.strip().splitlines()[-1:]}")
        best: dict[str, float] = {}
        with hits.open() as f:
            for query, _target, tm in csv.reader(f, delimiter="\t"):
                best[query] = max(best.get(query, 0.0), float(tm))
    return best


def structure_report(seqs: list[str], names: list[str], esmfold: str | None = None,
                     reference_pdbs: str | Path | None = None, pdb_dir: str | Path | None = None,
                     device: str = "cpu") -> dict[str, Any]:
    """The report's ``structure`` section: metrics that ran, and a note for each that did not."""
    import math

    report: dict[str, Any] = {"plddt_omegafold": "skipped: OmegaFold is not wrapped"}
    if esmfold is None:
        report["plddt_esmfold"] = "skipped: no ESMFold model given (--esmfold PATH_OR_HUB_ID)"
    else:
        model = load_esmfold(esmfold, device)
        scores = esmfold_plddt(model, seqs, pdb_dir, names)
        valid = [s for s in scores if not math.isnan(s)]
        report["plddt_esmfold"] = {"mean": sum(valid) / len(valid) if valid else float("nan"),
                                   "n": len(valid), "per_sequence": dict(zip(names, scores))}
    if reference_pdbs is None:
        report["tm_score_foldseek"] = "skipped: no reference structures given (--reference-pdbs DIR)"
    elif pdb_dir is None or esmfold is None:
        report["tm_score_foldseek"] = "skipped: needs the ESMFold structures (--esmfold)"
    elif shutil.which("foldseek") is None:
        report["tm_score_foldseek"] = "skipped: the `foldseek` command is not on PATH"
    else:
        best = foldseek_tm(pdb_dir, reference_pdbs)
        report["tm_score_foldseek"] = {"mean_best": sum(best.values()) / len(best) if best else float("nan"),
                                       "n": len(best), "per_sequence": best}
    return report
