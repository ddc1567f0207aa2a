"""Label tables: converting a published slide-score table into the project's label CSV.

The project's label CSV is ``slide_id,case_id,target[,site]`` with ``target`` an sTIL % in 0..100
(``train.read_labels``). ``digi_stils_rows`` reads the shipped Digi-sTILs table (Albusayli et al.;
``Number,TCGA Cases IDs,Digi-sTILs Score,Digi-TAS Score``, scores as fractions) and returns rows with
``target = 100 * score``, ``case_id = slide_id =`` the TCGA case id and ``site`` = the tissue source
site code (the second field of a TCGA barcode, e.g. ``A1`` in ``TCGA-A1-A0SK``), the grouping used
for centre-level cross-validation on TCGA.

Not covered: several slides per case (join your slide list to ``case_id`` first), other TCGA fields.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from adaptome.domains.pathology.errors import PathologyError


def tcga_site(barcode: str) -> str:
    """Tissue source site of a TCGA barcode (``TCGA-A1-A0SK`` -> ``A1``)."""
    parts = barcode.split("-")
    if len(parts) < 3 or parts[0] != "TCGA":
        raise PathologyError(f"{barcode!r} is not a TCGA barcode")
    return parts[1]


def digi_stils_rows(path: str | os.PathLike) -> list[dict]:
    """Rows ``slide_id, case_id, target (%), site`` from the Digi-sTILs CSV."""
    path = Path(path)
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        need = {"TCGA Cases IDs", "Digi-sTILs Score"}
        if not need <= set(reader.fieldnames or []):
            raise PathologyError(f"{path}: not a Digi-sTILs table (needs columns {sorted(need)})")
        rows = []
        for i, r in enumerate(reader, start=2):
            case = r["TCGA Cases IDs"].strip()
            try:
                score = float(r["Digi-sTILs Score"])
            except ValueError:
                raise PathologyError(f"{path}: line {i}: score {r['Digi-sTILs Score']!r} is not a number") from None
            rows.append({"slide_id": case, "case_id": case, "target": round(100.0 * score, 4),
                         "site": tcga_site(case)})
    return rows


def write_label_csv(rows: list[dict], path: str | os.PathLike) -> Path:
    """Write rows as the project's label CSV."""
    path = Path(path)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["slide_id", "case_id", "target", "site"])
        w.writeheader()
        w.writerows(rows)
    return path
