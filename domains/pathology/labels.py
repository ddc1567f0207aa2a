"""Label tables: converting a published slide-score table into the project's label CSV.

The project's label CSV is ``slide_id,case_id,target[,site]`` with ``target`` an sTIL % in 0..100
(``train.read_labels``). ``digi_stils_rows`` reads the shipped Digi-sTILs table (Albusayli et al.;
``Number,TCGA Cases IDs,Digi-sTILs Score,Digi-TAS Score``, scores as fractions) and returns rows with
``target = 100 * score``, ``case_id = slide_id =`` the TCGA case id and ``site`` = the tissue source
site code (the second field of a TCGA barcode, e.g. ``A1`` in ``TCGA-A1-A0SK``), the grouping used
for centre-level cross-validation on TCGA.

``case_sheet_rows`` reads a pathologist's case-level sheet ``case_id,target[,site]`` (target in %; an
empty target leaves the case out, listed) the same way. ``join_slides`` gives each slide file of a case its
case's row: TCGA slide files are named by their slide barcode (``TCGA-A1-A0SK-01Z-00-DX1.<uuid>.svs``),
whose first three fields are the case, so every slide of a case gets the case's score and ``case_id`` (its
slides then share a fold); slides without a case in the table, and slides of normal tissue (TCGA sample
types 10-19, e.g. ``-11A-``: the score is the tumour's), are returned apart, to be reported
(``adaptome pathology labels``).

Not covered: other TCGA fields, label tables of other layouts (write the label CSV yourself).
"""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path

from adaptome.domains.pathology.errors import PathologyError

#: a TCGA case (participant) barcode at the start of an id: ``TCGA-<site: 2 letters or digits>-<participant: 4>``,
#: ended by the id's end, '-' or '.' (``TCGA-BRCA-2019-0001`` is not one: its second field has 4 characters)
_TCGA_CASE = re.compile(r"^TCGA-([A-Z0-9]{2})-([A-Z0-9]{4})(?=$|[-.])")
#: a TCGA sample field after the case: two digits of sample type and a vial letter (``-01Z``, ``-11A``)
_TCGA_SAMPLE = re.compile(r"^-(\d{2})[A-Z]?(?=$|[-.])")


def tcga_site(barcode: str) -> str:
    """Tissue source site of a TCGA barcode (``TCGA-A1-A0SK`` -> ``A1``)."""
    m = _TCGA_CASE.match(barcode)
    if not m:
        raise PathologyError(f"{barcode!r} is not a TCGA barcode")
    return m.group(1)


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


def case_sheet_rows(path: str | os.PathLike) -> tuple[list[dict], list[str]]:
    """Rows ``slide_id, case_id, target, site`` (``slide_id`` = the case) from a case-level sheet
    ``case_id,target[,site]`` (target in %, as in the label CSV; ``site`` defaults to the TCGA site code of
    the case), and the cases whose target cell is empty (left out, to be listed). A case given twice, or a
    target that is not a number or outside 0..100, is an error naming the line."""
    from adaptome.domains.pathology.train import check_targets, parse_target

    path = Path(path)
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        reader.fieldnames = [c.strip() for c in reader.fieldnames or []]
        rows, no_target, line_of = [], [], {}
        for i, r in enumerate(reader, start=2):
            case = (r["case_id"] or "").strip()
            if not case:
                raise PathologyError(f"{path}: line {i}: empty case_id")
            if case in line_of:
                raise PathologyError(f"{path}: line {i}: case {case!r} is listed again (first on line "
                                     f"{line_of[case]}); give each case one row")
            line_of[case] = i
            t = parse_target(r["target"], path, i)
            if t is None:
                no_target.append(case)
                continue
            site = (r.get("site") or "").strip() or (tcga_site(case) if case_of(case) == case else "")
            rows.append({"slide_id": case, "case_id": case, "target": t, "site": site})
    check_targets(rows, no_target, path)
    return rows, no_target


def case_table_rows(path: str | os.PathLike) -> tuple[list[dict], list[str]]:
    """Case rows from the Digi-sTILs table (``digi_stils_rows``) or from a case-level sheet
    (``case_sheet_rows``), told apart by their columns; and the cases without a target."""
    path = Path(path)
    if not path.is_file():
        raise PathologyError(f"{path}: table not found")
    with path.open(newline="", encoding="utf-8-sig") as f:
        cols = [c.strip() for c in next(csv.reader(f), [])]
    if {"TCGA Cases IDs", "Digi-sTILs Score"} <= set(cols):
        return digi_stils_rows(path), []
    if {"case_id", "target"} <= set(cols):
        return case_sheet_rows(path)
    raise PathologyError(f"{path}: neither a Digi-sTILs table (columns 'TCGA Cases IDs', 'Digi-sTILs Score') nor a "
                         f"case-level sheet (columns 'case_id', 'target'[, 'site']); it has {cols}")


def write_label_csv(rows: list[dict], path: str | os.PathLike) -> Path:
    """Write rows as the project's label CSV."""
    from adaptome.core.atomic import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["slide_id", "case_id", "target", "site"])
        w.writeheader()
        w.writerows(rows)
    return path


def case_of(slide_id: str) -> str | None:
    """The TCGA case barcode a slide id starts with (``TCGA-A1-A0SK-01Z-00-DX1.x`` -> ``TCGA-A1-A0SK``), or
    ``None`` for an id that is not a TCGA barcode."""
    m = _TCGA_CASE.match(slide_id)
    return m.group(0) if m else None


def is_normal_tissue(slide_id: str) -> bool:
    """Whether a TCGA slide barcode's sample type (the first two digits of its fourth field, ``11`` in
    ``TCGA-A1-A0SK-11A-01-TS1``) is a normal one (10-19): not the tumour a case's sTIL score describes."""
    case = _TCGA_CASE.match(slide_id)
    sample = _TCGA_SAMPLE.match(slide_id[case.end():]) if case else None
    return bool(sample) and 10 <= int(sample.group(1)) <= 19


def join_slides(rows: list[dict], slide_ids: list[str]) -> tuple[list[dict], list[str], list[str]]:
    """Rows for the slides whose case (``case_of``) is in ``rows`` (one per slide, ``slide_id`` = the
    slide's id, the case's ``case_id``, ``target``, ``site``), the slide ids without a case in ``rows``,
    and those of the table's cases whose sample is normal tissue (``is_normal_tissue``: the case's score is a
    tumour's, so they are left out)."""
    by_case = {r["case_id"]: r for r in rows}
    out, unmatched, normal = [], [], []
    for sid in slide_ids:
        case = case_of(sid)
        if case in by_case and is_normal_tissue(sid):
            normal.append(sid)
        elif case in by_case:
            out.append({**by_case[case], "slide_id": sid})
        else:
            unmatched.append(sid)
    return out, unmatched, normal


def read_case_sheet(path: str | os.PathLike) -> dict[str, str]:
    """slide id -> case id from a sheet with columns ``slide_id,case_id`` (a label CSV; other columns, the
    target among them, are not read: ``score`` needs no target). An empty id, or a slide listed twice, is an
    error naming the line."""
    path = Path(path)
    if not path.is_file():
        raise PathologyError(f"{path}: label CSV not found")
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        reader.fieldnames = [c.strip() for c in reader.fieldnames or []]
        missing = [c for c in ("slide_id", "case_id") if c not in reader.fieldnames]
        if missing:
            raise PathologyError(f"{path}: label CSV lacks column(s) {missing} (has {reader.fieldnames})")
        out, line_of = {}, {}
        for i, r in enumerate(reader, start=2):
            sid, case = (r["slide_id"] or "").strip(), (r["case_id"] or "").strip()
            if not sid or not case:
                raise PathologyError(f"{path}: line {i}: empty {'slide_id' if not sid else 'case_id'}")
            if sid in line_of:
                raise PathologyError(f"{path}: line {i}: slide {sid!r} is listed again (first on line "
                                     f"{line_of[sid]}); give each slide one row")
            line_of[sid], out[sid] = i, case
    return out
