"""Writes the merge benchmark's two enzyme families (``data/nrpdb_ec_families.fasta`` + ``.tsv``) from DeepFRI's
nrPDB-EC test split (``flatironinstitute/DeepFRI``, ``preprocessing/data/``, commit 3bd6c7eae678).

Selection (card: ``data_cards/merge_nrpdb_ec_families.md``): the test chains whose full EC numbers (those
without '-') are all in one family: beta-lactamases (every full EC is 3.5.2.6) or serine/threonine protein
kinases (every full EC is under 2.7.11); chains in the upstream FASTA order.

Usage: python benchmarks/merge/make_families.py UPSTREAM_DIR
(UPSTREAM_DIR holds nrPDB-EC_2020.04_test_sequences.fasta and nrPDB-EC_2020.04_annot.tsv)
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).parent
#: family name -> predicate on a chain's set of full EC numbers
FAMILIES = {
    "beta-lactamase": lambda ecs: ecs == {"3.5.2.6"},
    "Ser/Thr kinase": lambda ecs: bool(ecs) and all(e.startswith("2.7.11.") for e in ecs),
}


def main(upstream: Path) -> None:
    from Bio import SeqIO

    ann = {}
    with (upstream / "nrPDB-EC_2020.04_annot.tsv").open(encoding="utf-8") as f:
        for i, line in enumerate(f):
            if i < 3:  # the EC vocabulary and two header lines
                continue
            chain, ecs = line.rstrip("\n").split("\t")
            ann[chain] = ecs
    fasta, rows = [], ["id\tfamily\tec_numbers"]
    for rec in SeqIO.parse(str(upstream / "nrPDB-EC_2020.04_test_sequences.fasta"), "fasta"):
        full = {e for e in ann[rec.id].split(",") if "-" not in e}
        fam = [name for name, keep in FAMILIES.items() if keep(full)]
        if fam:
            fasta.append(f">{rec.id}\n{rec.seq}")
            rows.append(f"{rec.id}\t{fam[0]}\t{ann[rec.id]}")
    (HERE / "data" / "nrpdb_ec_families.fasta").write_text("\n".join(fasta) + "\n")
    (HERE / "data" / "nrpdb_ec_families.tsv").write_text("\n".join(rows) + "\n")
    print(f"{len(fasta)} chains")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
