"""The merge benchmark's protein setting: three protein families as the three tasks.

Tasks: Cyclin_N (the shipped Pfam seed alignment, ``domains/protein/data/pfam/pfam8.seed.txt``, 95 sequences);
serine/threonine protein kinases (76 PDB chains whose full EC numbers all lie under 2.7.11) and
beta-lactamases (18 chains with EC 3.5.2.6 only), both from DeepFRI's nrPDB-EC test split, written into
``benchmarks/merge/data/nrpdb_ec_families.*`` by ``make_families.py`` (card
``data_cards/merge_nrpdb_ec_families.md``). The other shipped Pfam seeds hold at most 11 sequences per family,
too few for a training, a validation and a test split; the kinases and beta-lactamases are single homologous
families in the sense that matters here (members share sequence motifs: a member's 5-mers recur in the other
members far above chance), though nrPDB is non-redundant, so they are far less alike than Pfam seed members.

Splits per family: the sequences are shuffled with ``random.Random(0)`` (the same split for every run seed);
``max(5, round(0.15 n))`` go to the test split, as many to the validation split, the rest is training data.
Sequences are tokenised by the protein domain's character tokenizer (``<s>`` first) and packed into blocks of
``block`` tokens with ``</s>`` between proteins, as the language setting packs lines.

The base model's corpus: every shipped protein sequence outside the three families (the package's nrPDB-EC
subset, the other Pfam seeds, the TEM-1 wild type), minus any chain of the families and any sequence that
shares at least ``HOMOLOG_KMERS`` distinct 5-mers with one family's sequences and ten times the number expected
by chance (``homolog``: a 250-residue chain shares about 1.4 of its 5-mers with the kinases' 18,484 by chance
for uniform residues, 2 to 6 in practice; TEM-1 shares 253 with the beta-lactamases).

Not covered: splits by sequence identity (two members of a family can be close homologs, the same for every
merge method); sequences longer than a block are cut across blocks.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch

HERE = Path(__file__).parent
TASKS = ["Cyclin_N", "kinase", "blactamase"]
NAMES = {"Cyclin_N": "Cyclin_N (Pfam seed)", "kinase": "Ser/Thr kinases (EC 2.7.11)",
         "blactamase": "beta-lactamases (EC 3.5.2.6)"}
#: the family column of data/nrpdb_ec_families.tsv for each task read from it
EC_FAMILIES = {"kinase": "Ser/Thr kinase", "blactamase": "beta-lactamase"}
#: a base-corpus sequence sharing at least this many distinct 5-mers with a family's sequences, and
#: CHANCE_FACTOR times the count expected by chance, is left out as a homolog (``homolog``)
HOMOLOG_KMERS = 6
CHANCE_FACTOR = 10
KMER = 5


def family_records() -> dict[str, list]:
    """{task: records}: the Cyclin_N seed (the protein domain's Stockholm reader) and the two enzyme families
    (its FASTA reader and label table)."""
    from adaptome.domains.protein.data import attach_labels, data_dir, read_label_table
    from adaptome.domains.protein.formats import read_fasta, read_stockholm

    out = {"Cyclin_N": read_stockholm(data_dir() / "pfam" / "pfam8.seed.txt").records}
    if {r.label for r in out["Cyclin_N"]} != {"Cyclin_N"}:
        raise ValueError("pfam8.seed.txt: expected the Cyclin_N family")
    recs = attach_labels(read_fasta(HERE / "data" / "nrpdb_ec_families.fasta"),
                         read_label_table(HERE / "data" / "nrpdb_ec_families.tsv", "id", "family"), "families")
    for task, fam in EC_FAMILIES.items():
        out[task] = [r for r in recs if r.label == fam]
    return out


def kmers(seq: str) -> set[str]:
    return {seq[i:i + KMER] for i in range(len(seq) - KMER + 1)}


def homolog(seq_kmers: set[str], family_kmers: set[str]) -> bool:
    """A sequence shares at least ``HOMOLOG_KMERS`` distinct 5-mers with a family and ``CHANCE_FACTOR`` times
    the number expected by chance for uniform residues, |seq 5-mers| * |family 5-mers| / 20^5."""
    shared = len(seq_kmers & family_kmers)
    return shared >= max(HOMOLOG_KMERS, CHANCE_FACTOR * len(seq_kmers) * len(family_kmers) / 20 ** KMER)


def base_records(families: dict[str, list]) -> tuple[list, int, int]:
    """(every shipped sequence outside the three families that passes the homology screen, how many shipped
    sequences are family chains, how many failed the screen)."""
    from adaptome.domains.protein import data as D
    from adaptome.domains.protein.formats import Record, read_stockholm

    recs = list(D.ec_records())
    for path in sorted((D.data_dir() / "pfam").glob("pfam*.seed.txt")):
        fam = read_stockholm(path).records
        if fam[0].label != "Cyclin_N":
            recs.extend(fam)
    wt, _, _ = D.tem1()
    recs.append(Record("TEM-1", wt, "TEM-1"))
    ids = {r.id for v in families.values() for r in v}
    fam_kmers = [set().union(*(kmers(r.seq) for r in v)) for v in families.values()]
    other = [r for r in recs if r.id not in ids]
    kept = [r for r in other if not any(homolog(kmers(r.seq), k) for k in fam_kmers)]
    return kept, len(recs) - len(other), len(other) - len(kept)


def split(recs: list) -> tuple[list, list, list]:
    """(train, val, test) records of one family: a fixed shuffle, ``max(5, round(0.15 n))`` each held out."""
    recs = list(recs)
    random.Random(0).shuffle(recs)
    n = max(5, round(0.15 * len(recs)))
    return recs[2 * n:], recs[n:2 * n], recs[:n]


def blocks(tok, seqs: list[str], block: int) -> list[dict]:
    from adaptome.core.text import pack_blocks

    ids = [tok(s)["input_ids"] for s in seqs]  # <s> + residues
    return [{"input_ids": torch.tensor(b), "labels": torch.tensor(b)}
            for b in pack_blocks(ids, block, tok.eos_token_id)]


def data(tok, block: int):
    """(train, val, test: {family: blocks}, base corpus blocks, info) for the protein setting."""
    fams = family_records()
    train, val, test, info = {}, {}, {}, {"sequences": {}}
    for t in TASKS:
        tr, va, te = split(fams[t])
        train[t], val[t], test[t] = (blocks(tok, [r.seq for r in x], block) for x in (tr, va, te))
        info["sequences"][t] = {"train": len(tr), "val": len(va), "held_out": len(te),
                                "residues": sum(len(r.seq) for r in fams[t])}
    base, same, homologs = base_records(fams)
    info.update(base_sequences=len(base), base_residues=sum(len(r.seq) for r in base), family_chains_dropped=same,
                homologs_dropped=homologs)
    return train, val, test, blocks(tok, [r.seq for r in base], block), info
