"""Readers and writers for the multilingual domain's file formats.

* raw text: one sentence or document per line (GlotCC style), UTF-8;
* topic classification, SIB-200 style: TSV with header ``index_id<TAB>category<TAB>text`` (read
  without CSV quoting, as the SIB-200 repository does), plus an optional ``labels.txt``;
* sentiment: TSV with a header holding a text column (``tweet`` or ``text``) and ``label``
  (AfriSenti);
* NER: CoNLL / BIO, one ``token tag`` pair per line, a blank line between sentences (MasakhaNER,
  WikiANN, UNER after conversion to BIO). The tag is the last field; a line holding a tab is split on
  tabs only, so a token with an inner space (``New York<TAB>B-LOC``) is kept whole, a line without
  one on ASCII spaces only, as the field's loaders split (a no-break or narrow space, ``10\u202f000``, stays
  inside its token). ``write_conll`` writes ``token<TAB>tag``. Files with more columns (CoNLL-2003's
  ``token POS chunk NER``) read the first field as the token and the last as the tag, so every token line
  of a file must have as many fields as its first: a space-separated ``New York B-LOC`` in a two-column
  file (the token would be ``New``) or a stray third field (``Musa B-PER I-PER``) is an error naming the line.

Every reader gives its text, tokens and labels in Unicode NFC (``NORMAL_FORM``): Yoruba, Vietnamese or Hausa
text arrives with its diacritics precomposed (``ẹ́`` as U+1EB9 U+0301) or decomposed (``e`` U+0323 U+0301)
depending on its source, often mixed within one file. Read as is, the two spellings of one word are different
character n-grams to the baseline, different subwords to a tokenizer that does not normalise (mBERT's), and two
classes when a label is spelt both ways. NFC (canonical composition, what ``prepare-text`` writes) keeps every
letter's identity; it only replaces a few canonical duplicates (the OHM SIGN U+2126 by Ω U+03A9, the ANGSTROM SIGN by
Å, CJK compatibility ideographs by their unified forms). ``predictions.tsv`` therefore holds the NFC form of each token.

Lines end at LF, CRLF or CR only: a line separator (U+2028), NEL (U+0085) or form feed inside a tweet stays
in its line, as in the TSV / CSV readers of the field, and line numbers are an editor's.

Every reader names the file and the 1-based line number of a malformed line. Two labels of one file
that differ only in case or inner spacing (``Positive`` / ``positive``, ``B-Loc`` / ``B-LOC``) are an
error naming both lines, never two silent classes (surrounding spaces are stripped from every field).
Labels of a dev /
test split are checked against the training label set with ``check_labels``: an unseen label is an
error, never a silent new class.

Not covered: CoNLL-U (UNER's native format; convert its NER column to BIO first: a ``#`` comment line
is named as such in the error), multi-column
CoNLL-2003 files with POS / chunk columns in the middle (the last column is read as the tag, so
these work when the tag is last), compressed inputs.
"""

from __future__ import annotations

import os
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from adaptome.core.errors import AdaptomeError


class DataError(AdaptomeError, ValueError):
    """A data file is missing, malformed or inconsistent with the training data."""


@dataclass
class Example:
    """One classification example.

    Args:
        text: the sentence or tweet.
        label: its class name.
        ident: the source id (SIB-200 ``index_id``) or the 1-based line number.
        line: 1-based line number in its file (0: not read from a file).
    """

    text: str
    label: str
    ident: str = ""
    line: int = 0


@dataclass
class Sentence:
    """One NER sentence: words and their BIO tags (same length), and the 1-based line of each word in its
    file (empty when not read from a file)."""

    words: list[str]
    tags: list[str]
    lines: list[int] = field(default_factory=list)


_LINE_END = re.compile(r"\r\n|\r|\n")

#: every reader gives text in this Unicode normal form (module docstring)
NORMAL_FORM = "NFC"


def _read_lines(path: str | os.PathLike) -> list[str]:
    """The lines of a UTF-8 file (a byte-order mark dropped), each in Unicode ``NORMAL_FORM``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        # utf-8-sig: a byte-order mark (as Windows editors write) is not part of the first header or token
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    # one spelling per character: a decomposed e + U+0301 and the precomposed U+00E9 are the same letter
    text = unicodedata.normalize(NORMAL_FORM, text)
    # LF, CRLF or CR ends a line; str.splitlines would also split at U+2028, U+0085 (NEL), form feeds..., which
    # tweets and web text hold inside a line: a valid row became two, and every later line number was off
    lines = _LINE_END.split(text)
    return lines[:-1] if lines[-1] == "" else lines


def read_text(path: str | os.PathLike) -> list[str]:
    """Non-empty lines of a raw text file, stripped."""
    return [ln.strip() for ln in _read_lines(path) if ln.strip()]


def _header(path: Path, lines: list[str], required: Sequence[Sequence[str]]) -> list[int]:
    if not lines:
        raise DataError(f"{path}: empty file (expected a header line)")
    cols = lines[0].split("\t")
    idx = []
    for options in required:
        found = [c for c in options if c in cols]
        if not found:
            raise DataError(f"{path}:1: header {cols} lacks a column named {' or '.join(options)}")
        idx.append(cols.index(found[0]))
    return idx


def _read_tsv(path: str | os.PathLike, text_cols: Sequence[str], label_col: str,
              id_col: str | None) -> list[Example]:
    path = Path(path)
    lines = _read_lines(path)
    required = [text_cols, [label_col]] + ([[id_col]] if id_col else [])
    idx = _header(path, lines, required)
    ncols = len(lines[0].split("\t"))
    out = []
    for no, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != ncols:
            raise DataError(f"{path}:{no}: expected {ncols} tab-separated fields, found {len(fields)}")
        text, label = fields[idx[0]].strip(), fields[idx[1]].strip()
        if not text or not label:
            raise DataError(f"{path}:{no}: empty {'text' if not text else 'label'}")
        out.append(Example(text, label, fields[idx[2]].strip() if id_col else str(no), no))
    if not out:
        raise DataError(f"{path}: no examples after the header")
    _check_spelling(path, ((e.label, e.line) for e in out))
    return out


def _check_spelling(path: Path, labels: Iterable[tuple[str, int]]) -> None:
    """An error when two labels of one file differ only in case or inner spacing: one class typed two ways."""
    seen: dict[str, tuple[str, int]] = {}
    for label, no in labels:
        first = seen.setdefault(" ".join(label.split()).casefold(), (label, no))
        if first[0] != label:
            raise DataError(f"{path}:{no}: label {label!r} differs only in case or spacing from {first[0]!r} "
                            f"(line {first[1]}); spell each class one way")


def read_topic_tsv(path: str | os.PathLike) -> list[Example]:
    """SIB-200 ``index_id<TAB>category<TAB>text``."""
    return _read_tsv(path, ["text"], "category", "index_id")


def read_sentiment_tsv(path: str | os.PathLike) -> list[Example]:
    """AfriSenti ``tweet<TAB>label`` (a ``text`` column is accepted as well)."""
    return _read_tsv(path, ["tweet", "text"], "label", None)


def write_topic_tsv(path: str | os.PathLike, examples: Iterable[Example]) -> None:
    lines = ["index_id\tcategory\ttext"] + [f"{e.ident}\t{e.label}\t{e.text}" for e in examples]
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_sentiment_tsv(path: str | os.PathLike, examples: Iterable[Example]) -> None:
    lines = ["tweet\tlabel"] + [f"{e.text}\t{e.label}" for e in examples]
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")


def _check_tag(path: Path, no: int, tag: str, first: str) -> None:
    if tag == "O":
        return
    prefix, sep, etype = tag.partition("-")
    if prefix not in ("B", "I") or not sep or not etype:
        if first.startswith("#"):
            raise DataError(f"{path}:{no}: a CoNLL-U comment line (tag {tag!r} is not O, B-<type> or I-<type>); "
                            "CoNLL-U is not read: convert the file to 'token tag' BIO lines")
        raise DataError(f"{path}:{no}: tag {tag!r} is not O, B-<type> or I-<type>")


def _conll_fields(line: str) -> list[str]:
    """The fields of one CoNLL line: tab-separated when it holds a tab (a token may hold a space), else separated
    by ASCII spaces (a no-break or narrow space inside a token, ``10\u202f000``, is part of it); empty fields
    dropped."""
    parts = line.split("\t") if "\t" in line else re.split(r"[ ]+", line.strip(" \r"))
    return [f.strip() for f in parts if f.strip()]


def read_conll(path: str | os.PathLike) -> list[Sentence]:
    """CoNLL / BIO: ``token tag`` per line (module docstring), blank line between sentences; ``-DOCSTART-``
    is skipped."""
    path = Path(path)
    out: list[Sentence] = []
    words: list[str] = []
    tags: list[str] = []
    nos: list[int] = []
    width: tuple[int, int] | None = None  # (fields, line) of the first token line: every line has as many
    for no, line in enumerate(_read_lines(path) + [""], start=1):
        fields = _conll_fields(line)
        if not fields:
            if words:
                out.append(Sentence(words, tags, nos))
                words, tags, nos = [], [], []
            continue
        if fields[0] == "-DOCSTART-":
            continue
        if len(fields) < 2:
            raise DataError(f"{path}:{no}: expected 'token tag', found {line.strip()!r}")
        _check_tag(path, no, fields[-1], fields[0])  # first: a CoNLL-U comment is named as such
        width = width or (len(fields), no)
        if len(fields) != width[0]:
            raise DataError(f"{path}:{no}: {len(fields)} fields {fields}, but line {width[1]} has {width[0]}; every "
                            "line needs the same columns (token first, tag last); a token holding a space (New "
                            "York) must be tab-separated from its tag")
        words.append(fields[0])
        tags.append(fields[-1])
        nos.append(no)
    if not out:
        raise DataError(f"{path}: no sentences")
    _check_spelling(path, ((t, no) for s in out for t, no in zip(s.tags, s.lines)))
    return out


def write_conll(path: str | os.PathLike, sentences: Iterable[Sentence]) -> None:
    blocks = ["\n".join(f"{w}\t{t}" for w, t in zip(s.words, s.tags)) for s in sentences]
    Path(path).write_text("\n\n".join(blocks) + "\n", encoding="utf-8")


def read_labels(path: str | os.PathLike) -> list[str]:
    """A ``labels.txt``: one class name per line."""
    labels = read_text(path)
    if len(set(labels)) != len(labels):
        raise DataError(f"{path}: repeated label")
    return labels


def check_labels(path: str | os.PathLike, found: Iterable[str] | dict[str, int], known: Sequence[str]) -> None:
    """An error naming ``path`` when ``found`` holds a label outside ``known`` (the training labels);
    ``found`` may map each label to the first line it occurs on, which the error then names."""
    unknown = sorted(set(found) - set(known))
    if unknown:
        where = f":{found[unknown[0]]}" if isinstance(found, dict) and found.get(unknown[0]) else ""
        raise DataError(f"{path}{where}: label(s) {unknown} do not occur in the training data {sorted(known)}; "
                        "an evaluation split cannot add classes")


def first_lines(items: Iterable[Example | Sentence]) -> dict[str, int]:
    """Each label (class or tag) mapped to the first line it occurs on, for ``check_labels``."""
    out: dict[str, int] = {}
    for it in items:
        if isinstance(it, Sentence):
            for tag, no in zip(it.tags, it.lines or [0] * len(it.tags)):
                out.setdefault(tag, no)
        else:
            out.setdefault(it.label, it.line)
    return out
