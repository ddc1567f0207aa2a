"""Mutation-effect scoring, chosen by the model's kind, and the BLOSUM62 baseline beside it.

* A causal LM: fitness = NLL(wild type) - NLL(mutant) (ProLLaMA ``scripts/mutation.py``,
  Tranception-style zero-shot scoring); a multi-mutant is scored as one full mutant sequence.
* An ESM-style masked LM (``model.MASKED_LM_TYPES``): masked marginals as ESM-1v
  (``esm_mutations``); a multi-mutant scores the sum of its single effects.
* Baseline: the BLOSUM62 substitution score (Henikoff & Henikoff 1992, through Biopython's
  ``Bio.Align.substitution_matrices``) of ref -> alt, summed over a multi-mutant's substitutions.

Causal LM: both sequences are scored as ``<s>Seq=<...></s>`` under the causal LM; NLL is the summed negative
log-likelihood of every token after ``<s>``, so a positive score means the model prefers the mutant.
Mutants are written ``H24C`` (wild-type residue, position, new residue), several joined by ``:``;
position p refers to residue ``p - offset`` (0-based) of the given wild-type string (TEM-1 as shipped:
offset 24, as in the ESM variant-prediction example). A wrong wild-type letter is an error.

Not covered: insertions and deletions, length normalisation (ProLLaMA leaves it to the user).
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

from adaptome.domains.protein.formats import STANDARD_AA, FormatError, seq_line

_MUT_RX = re.compile(r"^([A-Z])(\d+)([A-Z])$")


def parse_mutant(code: str) -> list[tuple[str, int, str]]:
    """``'H24C:A30G'`` -> ``[('H', 24, 'C'), ('A', 30, 'G')]``."""
    out = []
    for part in code.strip().split(":"):
        m = _MUT_RX.match(part.strip())
        if not m:
            raise FormatError(f"mutant {code!r}: expected e.g. H24C (or H24C:A30G)")
        if m.group(3) not in STANDARD_AA:
            raise FormatError(f"mutant {code!r}: {m.group(3)!r} is not a standard amino acid")
        out.append((m.group(1), int(m.group(2)), m.group(3)))
    return out


def apply_mutant(wt: str, code: str, offset: int = 0) -> str:
    """The mutant sequence; each position p is index ``p - offset`` of ``wt``."""
    seq = list(wt)
    for ref, pos, alt in parse_mutant(code):
        i = pos - offset
        if not 0 <= i < len(wt):
            raise FormatError(f"mutant {code!r}: position {pos} is outside the wild type "
                              f"(offset {offset}, length {len(wt)})")
        if wt[i] != ref:
            raise FormatError(f"mutant {code!r}: wild type has {wt[i]!r} at position {pos}, not {ref!r} "
                              "(check --offset)")
        seq[i] = alt
    return "".join(seq)


def score_mutants(model, tok, wt: str, mutants: list[str], offset: int = 0, batch_size: int = 16,
                  progress: bool = False) -> list[float]:
    """One score per mutant code, higher = the model prefers the mutant: masked marginals (summed over
    a multi-mutant) for a masked LM, NLL(wt) - NLL(mutant) for a causal LM."""
    from adaptome.domains.protein.classify import score_targets
    from adaptome.domains.protein.model import MASKED_LM_TYPES

    for m in mutants:  # every code is checked against the wild type before any model call
        apply_mutant(wt, m, offset)
    if getattr(model.config, "model_type", None) in MASKED_LM_TYPES:
        from adaptome.domains.protein.esm_mutations import score_mutants_masked

        return score_mutants_masked(model, tok, wt, [parse_mutant(m) for m in mutants], offset, batch_size,
                                    progress)
    seqs = [wt] + [apply_mutant(wt, m, offset) for m in mutants]
    lps = score_targets(model, tok, [("", seq_line(s)) for s in seqs], batch_size, progress=progress)
    nll = [-lp for lp, _ in lps]
    return [nll[0] - x for x in nll[1:]]


def blosum62_scores(mutants: list[str]) -> list[float]:
    """BLOSUM62(ref, alt) summed over each mutant's substitutions (the baseline beside the model)."""
    from Bio.Align import substitution_matrices

    m = substitution_matrices.load("BLOSUM62")
    return [float(sum(m[ref][alt] for ref, _, alt in parse_mutant(code))) for code in mutants]


def read_wildtype(arg: str) -> str:
    """``--wildtype``: a FASTA file (its first record) or the sequence itself.

    A string of letters only (after removing white space) that is not an existing file is the
    sequence; anything else is a file name, so a long sequence never reaches the file system.
    """
    from adaptome.domains.protein.formats import clean_sequence, read_fasta

    compact = re.sub(r"\s", "", arg)
    try:
        is_file = Path(arg).is_file()
    except OSError:  # e.g. a name too long for the file system: not a file
        is_file = False
    if is_file:
        return read_fasta(arg)[0].seq
    if compact.isalpha():
        return clean_sequence(compact, "error", "--wildtype")
    raise FormatError(f"--wildtype {arg[:60]!r}: neither a FASTA file nor an amino-acid sequence")


def read_mutants_csv(path: str | Path, mutant_column: str = "mutant",
                     fitness_column: str | None = None) -> tuple[list[str], list[float] | None]:
    path = Path(path)
    if not path.is_file():
        raise FormatError(f"{path}: file not found")
    with path.open(encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        cols = reader.fieldnames or []
        if mutant_column not in cols:
            raise FormatError(f"{path}: no column {mutant_column!r} (columns: {', '.join(cols)})")
        if fitness_column and fitness_column not in cols:
            raise FormatError(f"{path}: no column {fitness_column!r} (columns: {', '.join(cols)})")
        rows = list(reader)
    if not rows:
        raise FormatError(f"{path}: no mutants")
    muts = [r[mutant_column] for r in rows]
    fit = None
    if fitness_column:
        fit = []
        for i, r in enumerate(rows, 2):
            try:
                fit.append(float(r[fitness_column]))
            except (TypeError, ValueError):
                raise FormatError(f"{path}:{i}: {fitness_column} {r[fitness_column]!r} is not a number") from None
    return muts, fit
