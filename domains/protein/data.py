"""Datasets: label tasks as templates, the shipped families / EC classes / TEM-1 scan, splits, and
the builders for stage 1 (``Seq=<...>`` lines) and stage 2 (instruction records;
``fit_instruction_records`` fits each to the instruction stage's token limit by cropping the
protein, never the answer, and reports the crop).

A label kind is a ``LabelTask``: ProLLaMA's superfamily task is ``LabelTask("superfamily")`` ->
``[Generate by superfamily]`` / ``Superfamily=<...>`` / ``[Determine superfamily]``; the Pfam
families shipped here are ``LabelTask("family")``; the six EC top-level classes of Shah &
Jayaratnam (arXiv 2411.05966) are ``LabelTask("enzyme class", key="EC")``. The ten-property setup of
that paper is a list of tasks in a config, not code.

Shipped data (``data/``, cards in ``data_cards/protein_*.md``): nine Pfam seed alignments
(Biopython test suite), a 165-chain subset of DeepFRI's nrPDB-EC test split, a TEM-1
beta-lactamase single-mutant subset (ampicillin 2500 ug/mL fitness) and ProLLaMA's
``superfamilies.txt`` (gzipped). Not covered: UniRef50-scale streaming; splits by sequence identity.
"""

from __future__ import annotations

import csv
import os
import random
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Iterable

from adaptome.domains.protein.formats import (
    FormatError,
    Policy,
    Record,
    field,
    instruction_record,
    read_fasta,
    read_stockholm,
    read_vocab,
    seq_line,
    validate_labels,
)


def data_dir() -> Path:
    return Path(str(resources.files("adaptome.domains.protein") / "data"))


@dataclass(frozen=True)
class LabelTask:
    """One label kind: the words used in ProLLaMA's instructions for it.

    Args:
        name: the label kind as written in the instructions (``superfamily``).
        key: the field name, ``{key}=<label>`` (default: ``name`` capitalised, spaces removed).
        generate: the generation instruction (default ``[Generate by {name}]``).
        determine: the understanding instruction (default ``[Determine {name}]``).
    """

    name: str
    key: str = ""
    generate: str = ""
    determine: str = ""

    def __post_init__(self) -> None:
        if not self.key:
            object.__setattr__(self, "key", self.name.title().replace(" ", ""))
        if not self.generate:
            object.__setattr__(self, "generate", f"[Generate by {self.name}]")
        if not self.determine:
            object.__setattr__(self, "determine", f"[Determine {self.name}]")

    def label_field(self, label: str) -> str:
        return field(self.key, label)

    def generate_prompt(self, label: str | None, prefix: str = "", open_seq: bool = False) -> str:
        """Prompt for conditional (``label``) or unconditional (``None``) generation.

        With ``prefix`` or ``open_seq`` the answer's ``Seq=<`` (and the prefix) follows the label field
        directly, as in the training text of a generation record (``instruction + ' ' + input`` then the
        output, no separator: ``Family=<X>Seq=<MK``)."""
        if label is None:
            return "Seq=<" + prefix
        base = f"{self.generate} {self.label_field(label)}"
        return base + ("Seq=<" + prefix if prefix or open_seq else "")

    def determine_prompt(self, seq: str) -> str:
        return f"{self.determine} {seq_line(seq)}"


SUPERFAMILY = LabelTask("superfamily")
FAMILY = LabelTask("family")
EC_CLASS = LabelTask("enzyme class", key="EC")


def instruction_records(records: Iterable[Record], task: LabelTask,
                        kinds: tuple[str, ...] = ("generate", "determine")) -> list[dict[str, str]]:
    """ProLLaMA records for labelled ``records``: generation and/or determination, in that order."""
    out = []
    for r in records:
        if r.label is None:
            raise FormatError(f"record {r.id!r} has no label; attach labels before building instructions")
        if "generate" in kinds:
            out.append(instruction_record(task.generate, task.label_field(r.label), seq_line(r.seq)))
        if "determine" in kinds:
            out.append(instruction_record(task.determine, seq_line(r.seq), task.label_field(r.label)))
    return out


@dataclass
class CropReport:
    """What fitting instruction records to the token limit cropped (``fit_instruction_records``).

    Args:
        max_seq_length: the token limit every record now fits (prompt + answer + ``</s>``).
        n_records: records written.
        n_cropped: records whose protein was cropped (never their answer).
        n_sequences: proteins the records were built from.
        n_sequences_cropped: proteins cropped in at least one of their records.
        residues_removed: residues cropped, summed over records.
        max_removed: the most residues cropped from one record.
        max_residues: the residue limit every record's protein was also cropped to (None: none).
    """

    max_seq_length: int
    n_records: int = 0
    n_cropped: int = 0
    n_sequences: int = 0
    n_sequences_cropped: int = 0
    residues_removed: int = 0
    max_removed: int = 0
    max_residues: int | None = None

    def message(self) -> str:
        limit = f"{self.max_seq_length} tokens" + (f" and {self.max_residues} residues" if self.max_residues else "")
        if not self.n_cropped:
            return f"no record cropped: all {self.n_records} fit {limit}"
        return (f"cropped {self.n_cropped} of {self.n_records} records ({self.n_sequences_cropped} of "
                f"{self.n_sequences} proteins) to fit {limit}: {self.residues_removed} "
                f"residues removed in all, at most {self.max_removed} from one record; every answer kept whole")


def widest_label(tok, labels: Iterable[str], render) -> str:
    """The label whose rendered text (``render(label)``) takes the most tokens."""
    from adaptome.domains.protein.tokenizer import encode

    return max(sorted(set(labels)), key=lambda lab: len(encode(tok, render(lab), bos=False)))


def generate_answer(tok, task: LabelTask, seq: str, label: str, max_seq_length: int | None) -> str:
    """The answer of a generation record for ``seq``: ``Seq=<seq>`` when it fits ``max_seq_length``
    tokens after ``task.generate_prompt(label)`` (with ``</s>``), else its longest fitting N-terminal
    part left open (``Seq=<MKV...``, no ``>``: the protein's real end is not in the record)."""
    from adaptome.domains.protein.instruct import crop_to_fit, n_tokens

    prompt, full = task.generate_prompt(label), seq_line(seq)
    if not max_seq_length or n_tokens(tok, prompt, full) <= max_seq_length:
        return full
    return "Seq=<" + crop_to_fit(tok, seq, lambda s: (prompt, "Seq=<" + s), max_seq_length)


def determine_input(tok, task: LabelTask, seq: str, label: str, max_seq_length: int | None) -> str:
    """The residues of ``seq`` an understanding record keeps: the longest N-terminal part with which
    ``task.determine_prompt(part)`` + ``task.label_field(label)`` + ``</s>`` fits ``max_seq_length``."""
    from adaptome.domains.protein.instruct import crop_to_fit

    if not max_seq_length:
        return seq
    return crop_to_fit(tok, seq, lambda s: (task.determine_prompt(s), task.label_field(label)), max_seq_length)


def fit_instruction_records(records: Iterable[Record], task: LabelTask, tok, max_seq_length: int,
                            kinds: tuple[str, ...] = ("generate", "determine"),
                            max_residues: int | None = None) -> tuple[list[dict], CropReport]:
    """``instruction_records`` that fit ``max_seq_length`` tokens of ``tok`` with every answer whole.

    The protein is cropped, never the answer (see ``instruct.py``). The crop of a protein does not
    depend on its own label: it is computed with the label that takes the most tokens, so that
    ``classify`` (which does not know the label) crops a query exactly as training did. With
    ``max_residues`` each protein is first cut to its first ``max_residues`` residues, by the same
    rule: a cropped generation answer is left open (no ``>``), a cropped understanding input stays
    closed; such records are counted as cropped.
    """
    records = list(records)
    for r in records:
        if r.label is None:
            raise FormatError(f"record {r.id!r} has no label; attach labels before building instructions")
    labels = [r.label for r in records]
    rep = CropReport(max_seq_length, n_sequences=len(records), max_residues=max_residues)
    out: list[dict] = []
    if not records:
        return out, rep
    gen_label = widest_label(tok, labels, task.generate_prompt)
    det_label = widest_label(tok, labels, task.label_field)
    for r in records:
        removed = []
        seq = r.seq[:max_residues] if max_residues else r.seq
        if "generate" in kinds:
            ans = open_if_cropped(generate_answer(tok, task, seq, gen_label, max_seq_length), len(seq) < len(r.seq))
            removed.append(len(r.seq) - len(parse_open_seq(ans)))
            out.append(instruction_record(task.generate, task.label_field(r.label), ans))
        if "determine" in kinds:
            kept = determine_input(tok, task, seq, det_label, max_seq_length)
            removed.append(len(r.seq) - len(kept))
            out.append(instruction_record(task.determine, seq_line(kept), task.label_field(r.label)))
        cut = [n for n in removed if n > 0]
        rep.n_cropped += len(cut)
        rep.n_sequences_cropped += bool(cut)
        rep.residues_removed += sum(cut)
        rep.max_removed = max([rep.max_removed] + cut)
    rep.n_records = len(out)
    return out, rep


def open_if_cropped(answer: str, cropped: bool) -> str:
    """A generation ``answer`` without its closing ``>`` when its protein was ``cropped`` before it:
    the protein's real end is not in the record, so the record must not teach an end there."""
    return answer[:-1] if cropped and answer.endswith(">") else answer


def parse_open_seq(text: str) -> str:
    """The residues of ``Seq=<...>`` or of an open ``Seq=<...`` answer."""
    body = text[len("Seq=<"):] if text.startswith("Seq=<") else text
    return body[:-1] if body.endswith(">") else body


# --- label tables ---------------------------------------------------------------------------------
def read_label_table(path: str | os.PathLike, id_column: str = "id", label_column: str = "label") -> dict[str, str]:
    """``id -> label`` from a CSV or TSV (by extension) with a header row; an empty label cell is an error
    naming the file and line (it would become the label ``<>``)."""
    path = Path(path)
    if not path.is_file():
        raise FormatError(f"{path}: label table not found")
    delim = "\t" if path.suffix in (".tsv", ".tab") else ","
    table: dict[str, str] = {}
    first_line: dict[str, int] = {}
    with path.open(encoding="utf-8-sig", newline="") as f:  # -sig: a spreadsheet's byte-order mark
        reader = csv.DictReader(f, delimiter=delim)
        cols = reader.fieldnames or []
        for c in (id_column, label_column):
            if c not in cols:
                raise FormatError(f"{path}: no column {c!r} (columns: {', '.join(cols)})")
        for row in reader:
            rid, lab = (row[id_column] or "").strip(), (row[label_column] or "").strip()
            if not lab:
                raise FormatError(f"{path}:{reader.line_num}: id {rid!r} has an empty {label_column!r} cell; "
                                  "give it a label or leave its row out")
            if rid in table and table[rid] != lab:
                raise FormatError(f"{path}:{reader.line_num}: id {rid!r} has label {lab!r}, but {table[rid]!r} on "
                                  f"line {first_line[rid]}")
            table.setdefault(rid, lab)
            first_line.setdefault(rid, reader.line_num)
    if not table:
        raise FormatError(f"{path}: label table has no rows")
    return table


#: a UniProt FASTA id, ``sp|P69905|HBA_HUMAN`` (Swiss-Prot) or ``tr|...`` (TrEMBL): database, accession, entry name
_UNIPROT_ID = re.compile(r"^(?:sp|tr)\|([^|\s]+)\|([^|\s]+)$")


def table_key(rid: str, table: dict[str, str]) -> str | None:
    """The key of ``table`` that labels record id ``rid``: the id itself, else, for a UniProt id
    (``sp|ACC|NAME``), its accession, then its entry name (UniProt's own tables are keyed by accession); None."""
    if rid in table:
        return rid
    m = _UNIPROT_ID.match(rid)
    if m:
        for key in m.groups():
            if key in table:
                return key
    return None


def attach_labels(records: list[Record], table: dict[str, str], source: str = "labels",
                  vocab: Iterable[str] | None = None, seq_source: str = "the sequences") -> list[Record]:
    """Records with their label from ``table`` (every record must have one, and a unique id, since the
    table is keyed by id; a UniProt id ``sp|ACC|NAME`` may be keyed by its accession or entry name, ``table_key``;
    labels checked against ``vocab`` when given). ``source`` names the table and
    ``seq_source`` the sequence file(s) in errors."""
    seen: set[str] = set()
    dup = next((r.id for r in records if r.id in seen or seen.add(r.id)), None)
    if dup is not None:
        raise FormatError(f"{seq_source}: record id {dup!r} occurs more than once; the label table {source} is "
                          "keyed by id, so each id must be unique")
    keys = {r.id: table_key(r.id, table) for r in records}
    missing = [r.id for r in records if keys[r.id] is None]
    if missing:
        uniprot = " (nor by its UniProt accession or entry name)" if _UNIPROT_ID.match(missing[0]) else ""
        raise FormatError(f"{source}: no label for {len(missing)} record(s), e.g. {missing[0]!r}{uniprot}")
    out = [Record(r.id, r.seq, table[keys[r.id]]) for r in records]
    if vocab is not None:
        validate_labels((r.label for r in out), vocab, source)
    return out


def superfamily_vocab() -> list[str]:
    """ProLLaMA's 11,268 accepted superfamily labels (``superfamilies.txt``)."""
    return read_vocab(data_dir() / "prollama" / "superfamilies.txt.gz", key="Superfamily")


# --- shipped sets ------------------------------------------------------------------------------------
def pfam_families(min_count: int = 7, max_per_family: int | None = 12, max_residues: int | None = None,
                  seed: int = 0, policy: Policy = "error") -> list[Record]:
    """Ungapped Pfam seed sequences labelled by family ID (``#=GF ID``).

    Families with fewer than ``min_count`` members are left out; larger ones are subsampled to
    ``max_per_family`` (seeded) so the classes are balanced; ``max_residues`` keeps the N-terminal
    part of longer sequences (a cropping step for tiny CPU models).
    """
    rng = random.Random(seed)
    out: list[Record] = []
    for path in sorted((data_dir() / "pfam").glob("pfam*.seed.txt")):
        fam = read_stockholm(path, policy)
        recs = fam.records
        if len(recs) < min_count:
            continue
        if max_per_family is not None and len(recs) > max_per_family:
            recs = sorted(rng.sample(recs, max_per_family), key=lambda r: r.id)
        out.extend(crop(recs, max_residues))
    return out


def ec_records(max_residues: int | None = None, policy: Policy = "error") -> list[Record]:
    """The shipped nrPDB-EC subset labelled ``EC1`` ... ``EC6`` (top-level enzyme class)."""
    d = data_dir() / "ec"
    recs = read_fasta(d / "nrPDB-EC_test_subset.fasta", policy)
    table = read_label_table(d / "nrPDB-EC_test_subset_labels.tsv", "id", "ec_class")
    return crop(attach_labels(recs, table, str(d)), max_residues)


def tem1() -> tuple[str, int, list[tuple[str, float]]]:
    """(mature wild type, position offset 24, [(mutant like 'H24C', fitness)]) of the TEM-1 scan."""
    d = data_dir() / "tem1"
    wt = read_fasta(d / "wildtype.fasta")[0].seq
    with (d / "BLAT_ECOLX_Ranganathan2015.subset.csv").open(encoding="utf-8", newline="") as f:
        rows = [(r["mutant"], float(r["fitness_amp2500"])) for r in csv.DictReader(f)]
    return wt, 24, rows


def crop(records: Iterable[Record], max_residues: int | None) -> list[Record]:
    if not max_residues:
        return list(records)
    return [Record(r.id, r.seq[:max_residues], r.label) for r in records]


@dataclass(frozen=True)
class Piece:
    """A stage-1 training window of one protein.

    Args:
        seq: the residues of the window.
        start: the window holds the protein's real first residue (it is written after ``Seq=<``).
        end: the window holds the real last residue (it is followed by the closing ``>``).
    """

    seq: str
    start: bool
    end: bool


def crop_windows(seq: str, max_residues: int | None, rng: random.Random) -> list[Piece]:
    """Cut ``seq`` into windows of at most ``max_residues`` at a random phase; markers only at real ends.

    A protein that fits is one window with both markers. A longer one is cut at ``o, o + W, o + 2W,
    ...`` (``W = max_residues``, offset ``o`` drawn from ``1..W``), so every residue is in exactly one
    window, only the first window opens with ``Seq=<`` and only the last one closes with ``>``: a crop
    never teaches the model that a protein ends where the crop ends, and long proteins still show
    their real ends. Not covered: overlapping windows, several phases per epoch.
    """
    if not max_residues or len(seq) <= max_residues:
        return [Piece(seq, True, True)]
    cuts = [0] + list(range(rng.randint(1, max_residues), len(seq), max_residues)) + [len(seq)]
    return [Piece(seq[a:b], a == 0, b == len(seq)) for a, b in zip(cuts, cuts[1:])]


def split_by_label(records: list[Record], n_test: int = 3, seed: int = 0) -> tuple[list[Record], list[Record]]:
    """Stratified hold-out: ``n_test`` random records of every label go to the test side."""
    rng = random.Random(seed)
    by: dict[str, list[Record]] = {}
    for r in records:
        by.setdefault(r.label, []).append(r)
    train, test = [], []
    for label in sorted(by):
        recs = list(by[label])
        rng.shuffle(recs)
        if len(recs) <= n_test:
            raise FormatError(f"label {label!r} has {len(recs)} records; need more than n_test={n_test}")
        test.extend(recs[:n_test])
        train.extend(recs[n_test:])
    return train, test


@dataclass
class TaskSpec:
    """A label task and its label set, as written in a tasks YAML (``configs/ten_properties.yaml``).

    Args:
        name: the label kind (``LabelTask.name``).
        labels: the allowed labels.
        key: the field name (``LabelTask.key``; default from ``name``).
        generate: the generation instruction (``LabelTask.generate``; default from ``name``).
        determine: the understanding instruction (``LabelTask.determine``; default from ``name``).
    """

    name: str
    labels: list[str]
    key: str = ""
    generate: str = ""
    determine: str = ""


@dataclass
class TasksFile:
    """A tasks YAML file.

    Args:
        tasks: the label tasks, one ``TaskSpec`` each.
    """

    tasks: list[TaskSpec]


def load_tasks(path: str | os.PathLike) -> list[tuple[LabelTask, list[str]]]:
    """(task, labels) pairs from a tasks YAML, strictly checked (unknown keys are errors)."""
    from adaptome.core.config import load_config

    cfg = load_config(TasksFile, path)
    return [(LabelTask(t.name, t.key, t.generate, t.determine), list(t.labels)) for t in cfg.tasks]
