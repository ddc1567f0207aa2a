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

A position named twice in one mutant (``H24C:H24A``) is refused. In a mutant table, a missing fitness value
(empty, ``nan``, ``NA``) keeps the mutant in the scores and leaves it out of both Spearman correlations (model
and baseline alike, counted in the message); errors name the file and line.

A causal LM scores the whole ``Seq=<...>`` line, so a wild type longer than its ``max_position_embeddings`` is
refused (a rotary model would run past its positions without an error); a masked LM scores in a window
(``esm_mutations``).

Not covered: insertions and deletions (``H24del``, ``H24_P25insA``: refused), length normalisation (ProLLaMA
leaves it to the user), a sliding window for causal LMs.
"""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path

from adaptome.domains.protein.formats import STANDARD_AA, FormatError, ProteinError, seq_line

_MUT_RX = re.compile(r"^([A-Z])(\d+)([A-Z])$")
_INDEL_RX = re.compile(r"(del|ins|dup|fs|_)", re.I)
MISSING = ("", "nan", "na", "n/a", "none", "null")  # fitness cells read as "no measurement"


def parse_mutant(code: str) -> list[tuple[str, int, str]]:
    """``'H24C:A30G'`` -> ``[('H', 24, 'C'), ('A', 30, 'G')]``."""
    out = []
    for part in code.strip().split(":"):
        m = _MUT_RX.match(part.strip())
        if not m:
            if _INDEL_RX.search(part) or part.strip().endswith("-"):
                raise FormatError(f"mutant {code!r}: insertions and deletions are not supported (substitutions "
                                  "only, e.g. H24C)")
            raise FormatError(f"mutant {code!r}: expected e.g. H24C (or H24C:A30G)")
        if m.group(3) not in STANDARD_AA:
            raise FormatError(f"mutant {code!r}: {m.group(3)!r} is not a standard amino acid")
        if any(pos == int(m.group(2)) for _, pos, _ in out):
            raise FormatError(f"mutant {code!r}: position {m.group(2)} is mutated twice")
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


def _matching_offset(wt: str, codes: list[str], tried: int) -> int | None:
    """An offset near ``tried`` (or 0 / 1) under which every mutant's wild-type letter matches, if any."""
    subs = [s for c in codes for s in parse_mutant(c)]
    for cand in sorted({0, 1, tried - 1, tried + 1} - {tried}):
        if all(0 <= pos - cand < len(wt) and wt[pos - cand] == ref for ref, pos, _ in subs):
            return cand
    return None


def check_mutants(wt: str, codes: list[str], offset: int, where: list[str] | None = None) -> None:
    """Every code parses and names the wild type's residues (``apply_mutant``); an error names ``where[i]``
    (e.g. ``file:line``) and, for a wrong wild-type letter, an offset under which all mutants match."""
    for i, code in enumerate(codes):
        try:
            apply_mutant(wt, code, offset)
        except FormatError as e:
            msg = f"{where[i]}: {e}" if where else str(e)
            if "wild type has" in str(e) or "outside the wild type" in str(e):
                try:
                    cand = _matching_offset(wt, codes, offset)
                except FormatError:
                    cand = None
                if cand is not None:
                    msg += f"; all {len(codes)} mutants match with --offset {cand}"
            raise FormatError(msg) from None


def score_mutants(model, tok, wt: str, mutants: list[str], offset: int = 0, batch_size: int = 16,
                  progress: bool = False) -> list[float]:
    """One score per mutant code, higher = the model prefers the mutant: masked marginals (summed over
    a multi-mutant) for a masked LM, NLL(wt) - NLL(mutant) for a causal LM."""
    from adaptome.domains.protein.classify import score_targets
    from adaptome.domains.protein.model import MASKED_LM_TYPES

    check_mutants(wt, mutants, offset)  # every code is checked against the wild type before any model call
    if getattr(model.config, "model_type", None) in MASKED_LM_TYPES:
        from adaptome.domains.protein.esm_mutations import score_mutants_masked

        return score_mutants_masked(model, tok, wt, [parse_mutant(m) for m in mutants], offset, batch_size,
                                    progress)
    limit = getattr(model.config, "max_position_embeddings", None)
    n_tokens = len(tok(seq_line(wt), add_special_tokens=False)["input_ids"]) + 2  # + <s> and </s>
    if limit and n_tokens > limit:  # a rotary model would run past its positions without an error
        raise ProteinError(f"the wild type ({len(wt)} residues, {n_tokens} tokens as Seq=<...>) is longer than this "
                           f"causal LM's {limit} positions: its likelihoods past them mean nothing; score it with an "
                           "ESM-style masked LM (scored in a window around each site) or a model with a longer context")
    seqs = [wt] + [apply_mutant(wt, m, offset) for m in mutants]
    lps = score_targets(model, tok, [("", seq_line(s)) for s in seqs], batch_size, progress=progress)
    nll = [-lp for lp, _ in lps]
    return [nll[0] - x for x in nll[1:]]


def blosum62_scores(mutants: list[str]) -> list[float]:
    """BLOSUM62(ref, alt) summed over each mutant's substitutions (the baseline beside the model)."""
    from Bio.Align import substitution_matrices

    m = substitution_matrices.load("BLOSUM62")
    return [float(sum(m[ref][alt] for ref, _, alt in parse_mutant(code))) for code in mutants]


def standard_wildtype(seq: str, where: str) -> str:
    """``seq`` when it holds only the 20 standard amino acids; else a ``FormatError`` naming ``where`` and the first
    other letter (X, U, B...): no mutant effect is scored against a residue the scores do not model, and
    score-mutations has no residue policy to choose."""
    from adaptome.domains.protein.formats import invalid_positions

    bad = invalid_positions(seq)
    if bad:
        raise FormatError(f"{where}: the wild type holds {seq[bad[0] - 1]!r} at position {bad[0]} ({len(bad)} "
                          "residue(s) outside the 20 standard amino acids); score-mutations scores standard residues "
                          "only: replace it in the wild type with the residue you mean (e.g. a selenocysteine U by C)")
    return seq


def read_wildtype(arg: str, notes: list[str] | None = None) -> str:
    """``--wildtype``: a FASTA file (its first record) or the sequence itself.

    A string of letters only (after removing white space) that is not an existing file is the
    sequence; anything else is a file name, so a long sequence never reaches the file system. A file
    of several records adds a line to ``notes`` naming the record used. Case, gaps (``-``, ``.``) and a trailing
    ``*`` are cleaned; a letter outside the 20 standard amino acids in the wild type is an error
    (``standard_wildtype``), one in a later record of the file is not read.
    """
    from adaptome.domains.protein.formats import clean_sequence, read_fasta

    compact = re.sub(r"\s", "", arg)
    try:
        is_file = Path(arg).is_file()
    except OSError:  # e.g. a name too long for the file system: not a file
        is_file = False
    if is_file:
        recs = read_fasta(arg, "keep")  # only the first record is read for residues (standard_wildtype)
        if len(recs) > 1 and notes is not None:
            notes.append(f"note: --wildtype {arg} holds {len(recs)} records; the first, {recs[0].id!r} "
                         f"({len(recs[0].seq)} residues), is the wild type")
        return standard_wildtype(recs[0].seq, f"{arg}: record {recs[0].id!r}")
    if compact.isalpha():
        return standard_wildtype(clean_sequence(compact, "keep", "--wildtype"), "--wildtype")
    raise FormatError(f"--wildtype {arg[:60]!r}: neither a FASTA file nor an amino-acid sequence")


def read_mutants_csv(path: str | Path, mutant_column: str = "mutant",
                     fitness_column: str | None = None) -> tuple[list[str], list[float | None] | None]:
    """(mutant codes, fitness or None per row) of a CSV; a missing cell (``MISSING``) is None, other
    non-numbers are an error naming the line. Every code is parsed here, errors naming ``file:line``."""
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
    muts = [(r[mutant_column] or "").strip() for r in rows]
    for i, code in enumerate(muts, 2):
        try:
            parse_mutant(code)
        except FormatError as e:
            raise FormatError(f"{path}:{i}: {e}") from None
    fit = None
    if fitness_column:
        fit = []
        for i, r in enumerate(rows, 2):
            cell = (r[fitness_column] or "").strip()
            if cell.lower() in MISSING:
                fit.append(None)
                continue
            try:
                val = float(cell)
            except ValueError:
                raise FormatError(f"{path}:{i}: {fitness_column} {cell!r} is not a number") from None
            fit.append(val if math.isfinite(val) else None)
    return muts, fit


def paired_spearman(scores: list[float], baseline: list[float], fitness: list[float | None]) -> dict:
    """Spearman of the model's and the baseline's scores against fitness on the same mutants: those with
    a measured fitness and a finite model score; the counts of the others are returned beside."""
    from adaptome.core.evaluation import spearman

    no_fit = sum(f is None for f in fitness)
    bad = sum(f is not None and not math.isfinite(s) for s, f in zip(scores, fitness))
    keep = [i for i, (s, f) in enumerate(zip(scores, fitness)) if f is not None and math.isfinite(s)]
    out = {"n": len(keep), "no_fitness": no_fit, "nonfinite_score": bad, "model": None, "baseline": None}
    if len(keep) >= 2:
        out["model"] = spearman([scores[i] for i in keep], [fitness[i] for i in keep])
        out["baseline"] = spearman([baseline[i] for i in keep], [fitness[i] for i in keep])
    return out
