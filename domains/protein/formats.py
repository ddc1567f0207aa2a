"""ProLLaMA's text forms and the sequence files around them.

ProLLaMA (Lyu et al. 2024, arXiv 2402.16445; code ``Lyu6PosHao/ProLLaMA``) writes a protein as one
line ``Seq=<MKRVL...>`` (stage 1) and a labelled example as an Alpaca record
``{instruction, input, output}`` (stage 2), e.g. ``[Generate by superfamily]`` /
``Superfamily=<Gnk2-homologous domain superfamily>`` -> ``Seq=<EDAIIW...>``. This module writes and
parses those forms exactly, reads FASTA and Stockholm through Biopython, and checks labels against a
vocabulary (ProLLaMA's ``superfamilies.txt`` ships gzipped in ``data/``).

Residue policy (``policy`` argument): sequences are upper-cased; gap characters ``-`` and ``.``
(Stockholm) and one trailing stop ``*`` are removed. Then

* ``"error"`` (default): any letter outside the 20 standard amino acids raises ``ResidueError``
  naming the file, the record and the first offending position;
* ``"skip"``: records with such letters are dropped (the caller gets the count);
* ``"keep"``: the IUPAC extras ``B Z X U O J`` are accepted; anything else still raises.

An empty file or an empty record is always an error, and so is another policy name. The readers take an
optional ``skipped`` list that collects the ids of the records ``"skip"`` dropped, for the caller to report.
Not covered: multi-line ``Seq=<`` values, lower-case residues as a signal (they are upper-cased), nucleotide
input.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Literal

from adaptome.core.errors import AdaptomeError

STANDARD_AA = "ACDEFGHIKLMNPQRSTVWY"
EXTRA_AA = "BZXUOJ"
Policy = Literal["error", "skip", "keep"]
POLICIES = ("error", "skip", "keep")

_FIELD_RX = re.compile(r"^([A-Za-z][A-Za-z0-9_ \-]*)=<(.*)>$", re.S)
_OPEN_RX = re.compile(r"^[A-Za-z][A-Za-z0-9_ \-]*=<[^>]*$")


class ProteinError(AdaptomeError, ValueError):
    """Base of the protein domain's user errors (a bad option, file or label); one-line message."""


class FormatError(ProteinError):
    """A file or line does not follow the expected format; the message names the file."""


class ResidueError(FormatError):
    """A sequence holds a residue outside the allowed alphabet."""


class LabelError(FormatError):
    """A label is not in the vocabulary."""


@dataclass(frozen=True)
class Record:
    """One protein: identifier, residues (clean, upper case), optional label."""

    id: str
    seq: str
    label: str | None = None


# --- ProLLaMA text forms -------------------------------------------------------------------------
def field(key: str, value: str) -> str:
    """``Key=<value>``, ProLLaMA's way to write a sequence or a label."""
    if ">" in value or "\n" in value:
        raise FormatError(f"value for {key} must not contain '>' or a newline: {value!r}")
    return f"{key}=<{value}>"


def seq_line(seq: str) -> str:
    return field("Seq", seq)


def parse_field(text: str, key: str | None = None, source: str = "<text>") -> tuple[str, str]:
    """Split ``Key=<value>`` into (key, value); ``key`` given means it must match."""
    m = _FIELD_RX.match(text.strip())
    if not m:
        raise FormatError(f"{source}: expected Key=<value>, got {text[:60]!r}")
    if key is not None and m.group(1) != key:
        raise FormatError(f"{source}: expected {key}=<...>, got {m.group(1)}=<...>")
    return m.group(1), m.group(2)


def is_open_field(text: str) -> bool:
    """``Key=<value`` without the closing ``>``: a sequence cropped before its real end."""
    return bool(_OPEN_RX.match(text.strip()))


def parse_seq_line(text: str, source: str = "<text>") -> str:
    return parse_field(text, "Seq", source)[1]


def write_seq_lines(seqs: Iterable[str], path: str | os.PathLike) -> Path:
    """Stage-1 text file: one ``Seq=<...>`` line per protein."""
    path = Path(path)
    path.write_text("".join(seq_line(s) + "\n" for s in seqs), encoding="utf-8")
    return path


def _read_text(path: Path) -> str:
    """The file's text as UTF-8, without an editor's byte-order mark; other bytes name the file and line."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise FormatError(f"{path}:{line}: not UTF-8 text (byte {data[e.start]:#04x})") from None


def read_seq_lines(path: str | os.PathLike) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise FormatError(f"{path}: file not found")
    out = []
    for i, line in enumerate(_read_text(path).splitlines(), 1):
        if line.strip():
            out.append(parse_seq_line(line, f"{path}:{i}"))
    if not out:
        raise FormatError(f"{path}: no Seq=<...> lines")
    return out


# --- instruction records ---------------------------------------------------------------------------
_KEYS = ("instruction", "input", "output")


def instruction_record(instruction: str, input: str, output: str) -> dict[str, str]:
    return {"instruction": instruction, "input": input, "output": output}


def _check_record(rec: object, where: str) -> dict[str, str]:
    if not isinstance(rec, dict) or set(rec) != set(_KEYS) or not all(isinstance(rec[k], str) for k in _KEYS):
        raise FormatError(f"{where}: an instruction record has exactly the string keys {', '.join(_KEYS)}")
    return {k: rec[k] for k in _KEYS}


def write_instructions(records: Iterable[dict], path: str | os.PathLike) -> Path:
    """JSONL, one ``{instruction, input, output}`` per line, keys in that order."""
    path = Path(path)
    lines = [json.dumps(_check_record(r, str(path)), ensure_ascii=False) for r in records]
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def read_instructions(path: str | os.PathLike) -> list[dict[str, str]]:
    """JSONL records, or a JSON array as in ProLLaMA's ``example.json``."""
    path = Path(path)
    if not path.is_file():
        raise FormatError(f"{path}: file not found")
    text = _read_text(path)
    if not text.strip():
        raise FormatError(f"{path}: empty file, no instruction records")
    if text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise FormatError(f"{path}: invalid JSON ({e})") from None
        return [_check_record(r, f"{path}[{i}]") for i, r in enumerate(data)]
    out = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(_check_record(json.loads(line), f"{path}:{i}"))
        except json.JSONDecodeError as e:
            raise FormatError(f"{path}:{i}: invalid JSON ({e.msg})") from None
    return out


def prompt_of(rec: dict[str, str]) -> str:
    """ProLLaMA's source text: ``instruction + ' ' + input`` (its ``PROMPT_TEMPLATE='{instruction}'``)."""
    return f"{rec['instruction']} {rec['input']}"


# --- residues ---------------------------------------------------------------------------------------
def clean_sequence(raw: str, policy: Policy = "error", where: str = "<sequence>") -> str | None:
    """Upper-case, drop gaps and a trailing ``*``, apply the residue policy (None = skipped)."""
    if policy not in POLICIES:
        raise ProteinError(f"residue policy {policy!r}: known: {', '.join(POLICIES)}")
    seq = re.sub(r"[\s.\-]", "", str(raw)).upper()
    if seq.endswith("*"):
        seq = seq[:-1]
    if not seq:
        raise FormatError(f"{where}: empty sequence")
    allowed = STANDARD_AA + (EXTRA_AA if policy == "keep" else "")
    for pos, ch in enumerate(seq, 1):
        if ch not in allowed:
            if policy == "skip" and ch in EXTRA_AA:
                return None
            raise ResidueError(f"{where}: non-standard residue {ch!r} at position {pos} "
                               f"(residue policy {policy!r}; use 'keep' for B/Z/X/U/O/J or 'skip')")
    return seq


def invalid_positions(seq: str) -> list[int]:
    """1-based positions of letters outside the 20 standard amino acids."""
    return [i for i, ch in enumerate(seq, 1) if ch not in STANDARD_AA]


# --- FASTA and Stockholm ------------------------------------------------------------------------------
def _fasta_records(path: str | os.PathLike) -> list[tuple[str, str, str]]:
    """(id, full header, raw sequence) per record, parsed with Biopython; the one FASTA parser."""
    from Bio import SeqIO

    path = Path(path)
    if path.is_dir():
        raise FormatError(f"{path}: a directory, not a FASTA file")
    if not path.is_file():
        raise FormatError(f"{path}: file not found")
    text = path.read_text(encoding="utf-8-sig", errors="replace")  # -sig: an editor's byte-order mark
    if not text.strip():
        raise FormatError(f"{path}: empty FASTA file, no records")
    first = next((i, ln) for i, ln in enumerate(text.splitlines(), 1) if ln.strip())
    if not first[1].startswith(">"):
        raise FormatError(f"{path}: not FASTA: line {first[0]} should be a '>' header line, got {first[1][:40]!r}")
    out = [(rec.id, rec.description, str(rec.seq)) for rec in SeqIO.parse(io.StringIO(text), "fasta")]
    if not out:
        raise FormatError(f"{path}: no FASTA records (does the file start with '>'?)")
    return out


def read_fasta(path: str | os.PathLike, policy: Policy = "error", skipped: list[str] | None = None) -> list[Record]:
    """Records of a FASTA file (Biopython), residues cleaned by ``policy``. The label is None; see
    ``data.attach_labels``."""
    out = []
    for rid, _, raw in _fasta_records(path):
        seq = clean_sequence(raw, policy, f"{Path(path)}: record {rid!r}")
        if seq is not None:
            out.append(Record(rid, seq))
        elif skipped is not None:
            skipped.append(rid)
    return out


def fasta_text(records: Iterable[tuple[str, str]], width: int = 60, where: str = "FASTA") -> str:
    """(header, sequence) pairs as FASTA text, wrapped at ``width`` columns; headers kept verbatim."""
    chunks = []
    for header, seq in records:
        if "\n" in header:
            raise FormatError(f"{where}: FASTA header must be one line: {header!r}")
        body = "\n".join(seq[i:i + width] for i in range(0, len(seq), width)) if seq else ""
        chunks.append(f">{header}\n{body}\n" if body else f">{header}\n")
    return "".join(chunks)


def write_fasta(records: Iterable[tuple[str, str]], path: str | os.PathLike, width: int = 60) -> Path:
    """(header, sequence) pairs to a FASTA file (``fasta_text``)."""
    path = Path(path)
    path.write_text(fasta_text(records, width, str(path)), encoding="utf-8")
    return path


def read_fasta_headers(path: str | os.PathLike) -> list[tuple[str, str]]:
    """(full header, raw sequence) pairs, no residue policy (for generated files, which may hold
    empty or flagged sequences)."""
    return [(header, raw) for _, header, raw in _fasta_records(path)]


@dataclass(frozen=True)
class StockholmFamily:
    """One Pfam-style Stockholm alignment, ungapped: ``#=GF ID``, ``AC``, clan ``CL`` and records
    (each labelled with the family's ID or AC, see ``read_stockholm_families``)."""

    id: str
    accession: str | None
    clan: str | None
    records: list[Record]


STOCKHOLM_SUFFIXES = (".sto", ".stk", ".seed", ".sth")
StockholmLabel = Literal["id", "ac"]


def _gf_blocks(path: Path) -> list[dict[str, str]]:
    """The ``#=GF`` tags (first value of each) of every alignment block, in file order."""
    blocks: list[dict[str, str]] = []
    with path.open(encoding="utf-8-sig", errors="replace") as f:
        for line in f:
            if line.startswith("# STOCKHOLM"):
                blocks.append({})
            elif line.startswith("#=GF ") and blocks:
                tag, _, val = line[5:].strip().partition(" ")
                blocks[-1].setdefault(tag, val.strip())
    return blocks


def read_stockholm_families(path: str | os.PathLike, policy: Policy = "error", label: StockholmLabel = "id",
                            skipped: list[str] | None = None) -> list[StockholmFamily]:
    """Every alignment of a Stockholm file (a Pfam ``Pfam-A.seed`` holds thousands), gaps removed.

    Sequences are parsed with Biopython's ``AlignIO.parse(..., "stockholm")``; the ``#=GF ID / AC / CL``
    lines, which ``AlignIO`` does not keep, are read from the same blocks (``# STOCKHOLM 1.0`` ...
    ``//``), so each family in a multi-alignment file keeps its own. Each record's label is the
    family's ``#=GF ID`` (``label="id"``) or ``#=GF AC`` (``"ac"``); an alignment without that line
    is an error, except that a file holding one alignment without ``#=GF ID`` is named after the file.
    """
    from Bio import AlignIO

    path = Path(path)
    if not path.is_file():
        raise FormatError(f"{path}: file not found")
    if label not in ("id", "ac"):
        raise FormatError(f"Stockholm label {label!r}: known: id, ac")
    try:  # parsed from the decoded text: an editor's byte-order mark would hide the '# STOCKHOLM 1.0' line
        text = path.read_text(encoding="utf-8-sig", errors="replace")
        alignments = list(AlignIO.parse(io.StringIO(text), "stockholm"))
    except (ValueError, AssertionError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FormatError(f"{path}: not a Stockholm alignment ({msg})") from None
    blocks = _gf_blocks(path)
    if not alignments or len(blocks) != len(alignments):
        raise FormatError(f"{path}: no Stockholm alignment (expected '# STOCKHOLM 1.0' ... '//' blocks)")
    out = []
    for i, (aln, gf) in enumerate(zip(alignments, blocks), 1):
        fam_id = gf.get("ID") or (path.name.split(".")[0] if len(alignments) == 1 else None)
        acc = gf.get("AC")
        name = fam_id if label == "id" else acc
        if not name:
            tag = "ID" if label == "id" else "AC"
            raise FormatError(f"{path}: alignment {i} has no '#=GF {tag}' line to label its sequences")
        recs = []
        for r in aln:
            seq = clean_sequence(str(r.seq), policy, f"{path}: record {r.id!r}")
            if seq is not None:
                recs.append(Record(r.id, seq, name))
            elif skipped is not None:
                skipped.append(r.id)
        out.append(StockholmFamily(fam_id or name, acc, gf.get("CL"), recs))
    return out


def read_stockholm(path: str | os.PathLike, policy: Policy = "error") -> StockholmFamily:
    """The one alignment of a Stockholm file (``read_stockholm_families``; more than one is an error)."""
    fams = read_stockholm_families(path, policy)
    if len(fams) != 1:
        raise FormatError(f"{Path(path)}: {len(fams)} alignments; expected one (use read_stockholm_families)")
    return fams[0]


def is_stockholm(path: str | os.PathLike) -> bool:
    """A Stockholm file by extension (``.sto .stk .seed .sth``) or content (``# STOCKHOLM`` first)."""
    path = Path(path)
    if path.suffix.lower() in STOCKHOLM_SUFFIXES:
        return True
    with path.open("rb") as f:
        head = f.read(4096).decode("utf-8-sig", errors="replace").lstrip().upper()
    return head.startswith("# STOCKHOLM")


def read_sequences(path: str | os.PathLike, policy: Policy = "error", key: str | None = None,
                   stockholm_label: StockholmLabel = "id", skipped: list[str] | None = None) -> list[Record]:
    """Records of a FASTA or Stockholm file, told apart by ``is_stockholm``; the one reader wherever a
    sequence file is an input (``build-dataset``, ``classify``).

    Labels: a Stockholm record is labelled by its family (``read_stockholm_families``); a FASTA record
    by a ``{key}=<label>`` field in its header when ``key`` is given and the header holds one (the
    ``sequences.fasta`` that ``build-dataset`` writes), otherwise None.
    """
    path = Path(path)
    if not path.is_file():
        raise FormatError(f"{path}: file not found")
    if is_stockholm(path):
        return [r for fam in read_stockholm_families(path, policy, stockholm_label, skipped) for r in fam.records]
    rx = re.compile(re.escape(key) + r"=<([^>]*)>") if key else None
    out = []
    for rid, header, raw in _fasta_records(path):
        seq = clean_sequence(raw, policy, f"{path}: record {rid!r}")
        if seq is not None:
            m = rx.search(header) if rx else None
            out.append(Record(rid, seq, m.group(1) if m else None))
        elif skipped is not None:
            skipped.append(rid)
    return out


# --- label vocabulary -----------------------------------------------------------------------------------
def read_vocab(path: str | os.PathLike, key: str | None = None) -> list[str]:
    """Labels from a file with one ``Key=<label>`` (or bare label) per line; ``.gz`` is read too."""
    path = Path(path)
    if not path.is_file():
        raise FormatError(f"{path}: vocabulary file not found")
    if path.suffix == ".gz":
        with gzip.open(path, "rt", encoding="utf-8-sig") as f:
            lines = [ln.rstrip("\n") for ln in f if ln.strip()]
    else:
        lines = [ln for ln in _read_text(path).splitlines() if ln.strip()]
    out = []
    for i, ln in enumerate(lines, 1):
        out.append(parse_field(ln, key, f"{path}:{i}")[1] if "=<" in ln else ln.strip())
    if not out:
        raise FormatError(f"{path}: empty vocabulary")
    return out


def validate_labels(labels: Iterable[str], vocab: Iterable[str], source: str = "labels") -> None:
    """Raise ``LabelError`` listing labels absent from ``vocab`` (with the closest known ones)."""
    import difflib

    known = set(vocab)
    bad = sorted({lab for lab in labels if lab not in known})
    if bad:
        near = difflib.get_close_matches(bad[0], list(known), n=3)
        hint = f"; closest known: {near}" if near else ""
        raise LabelError(f"{source}: {len(bad)} label(s) not in the vocabulary, e.g. {bad[0]!r}{hint}")
