"""``prepare-text`` and ``prepare-kg``: raw text and ConceptNet assertions -> split sentence files.

Text (GlotCC style, one sentence or document per line): each line is Unicode NFC normalised and
its whitespace collapsed; empty lines, lines shorter than ``min_chars`` and exact duplicates (after
normalisation, first occurrence kept) are dropped; the rest is shuffled with ``seed``, capped at
``max_lines`` and split train / validation / test (80 / 10 / 10 by default, as the reference's
GlotCC preparation). The report counts every dropped line by reason.

ConceptNet (Gurgurov et al. 2025, ``cn_to_nl``): an assertion ``(rel, start, end)`` becomes the
sentence ``"{start} {phrase(rel)} {end}."`` with a fixed English phrase per relation, so the text
is code-mixed (language words, English glue). Concept URIs ``/c/<lang>/<term>[/<pos>...]`` keep
only ``<term>`` with ``_`` turned into spaces. Assertions whose ends are not both in the language,
whose relation is not in the predicate map, or whose two ends are equal (self-loops) are dropped
and counted.

Not covered: language identification of the text (the caller says which language a file holds),
near-duplicate detection, ConceptNet's edge weights and sources (ignored).
"""

from __future__ import annotations

import csv
import json
import os
import random
import re
import unicodedata
from pathlib import Path
from typing import Iterable

from adaptome.domains.multilingual.readers import DataError, _read_lines

SPLITS = ("train", "validation", "test")

#: English phrase per ConceptNet 5 relation (34 relations; IsA, PartOf, HasA, Synonym and RelatedTo
#: follow the reference's wording).
PREDICATES: dict[str, str] = {
    "RelatedTo": "is related to", "FormOf": "is a form of", "IsA": "is a type of", "PartOf": "is a part of",
    "HasA": "belongs to", "UsedFor": "is used for", "CapableOf": "is capable of", "AtLocation": "is found at",
    "Causes": "causes", "HasSubevent": "has the subevent", "HasFirstSubevent": "begins with",
    "HasLastSubevent": "ends with", "HasPrerequisite": "requires", "HasProperty": "has the property",
    "MotivatedByGoal": "is motivated by", "ObstructedBy": "is obstructed by", "Desires": "desires",
    "CreatedBy": "is created by", "Synonym": "is a synonym of", "Antonym": "is the opposite of",
    "DistinctFrom": "is distinct from", "DerivedFrom": "is derived from", "SymbolOf": "is a symbol of",
    "DefinedAs": "is defined as", "MannerOf": "is a way of", "LocatedNear": "is located near",
    "HasContext": "is used in the context of", "SimilarTo": "is similar to",
    "EtymologicallyRelatedTo": "is etymologically related to",
    "EtymologicallyDerivedFrom": "is etymologically derived from", "CausesDesire": "makes you want",
    "MadeOf": "is made of", "ReceivesAction": "can be", "Entails": "entails",
}


def normalise(line: str) -> str:
    """NFC, whitespace runs collapsed to one space, stripped."""
    return " ".join(unicodedata.normalize("NFC", line).split())


def split_lines(lines: list[str], seed: int, ratios: tuple[float, float, float]) -> dict[str, list[str]]:
    if len(ratios) != 3 or any(r < 0 for r in ratios) or abs(sum(ratios) - 1.0) > 1e-6:
        raise DataError(f"split ratios must be three non-negative numbers summing to 1, got {list(ratios)}")
    order = list(lines)
    random.Random(seed).shuffle(order)
    n_train = int(round(ratios[0] * len(order)))
    n_val = int(round(ratios[1] * len(order)))
    return {"train": order[:n_train], "validation": order[n_train:n_train + n_val],
            "test": order[n_train + n_val:]}


def clean_lines(lines: Iterable[str], min_chars: int = 1) -> tuple[list[str], dict[str, int]]:
    """Normalised, non-empty, long enough, first occurrences only; plus counts of what was dropped."""
    kept, seen = [], set()
    report = {"read": 0, "dropped_empty": 0, "dropped_short": 0, "dropped_duplicate": 0}
    for raw in lines:
        report["read"] += 1
        line = normalise(raw)
        if not line:
            report["dropped_empty"] += 1
        elif len(line) < min_chars:
            report["dropped_short"] += 1
        elif line in seen:
            report["dropped_duplicate"] += 1
        else:
            seen.add(line)
            kept.append(line)
    return kept, report


def write_splits(out_dir: Path, splits: dict[str, list[str]]) -> dict[str, int]:
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, lines in splits.items():
        (out_dir / f"{name}.txt").write_text("".join(f"{ln}\n" for ln in lines), encoding="utf-8")
    return {name: len(lines) for name, lines in splits.items()}


def prepare_text(files: list[str | os.PathLike], out_dir: str | os.PathLike, max_lines: int | None = None,
                 min_chars: int = 1, seed: int = 0, ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> dict:
    """Clean, deduplicate, cap and split the lines of ``files`` (one language) into ``out_dir``."""
    lines: list[str] = []
    for f in files:
        if not Path(f).is_file():
            raise DataError(f"{f}: file not found")
        lines.extend(_read_lines(f))
    kept, report = clean_lines(lines, min_chars)
    random.Random(seed).shuffle(kept)
    report["dropped_over_cap"] = max(0, len(kept) - max_lines) if max_lines else 0
    if max_lines:
        kept = kept[:max_lines]
    if not kept:
        raise DataError(f"{', '.join(map(str, files))}: no line left after cleaning ({report})")
    report["kept"] = len(kept)
    report["splits"] = write_splits(Path(out_dir), split_lines(kept, seed, ratios))
    return report


def concept_term(uri: str, lang: str) -> str | None:
    """``/c/<lang>/<term>[/...]`` -> the term with ``_`` as spaces; None for another language."""
    parts = uri.strip().split("/")
    if len(parts) < 4 or parts[1] != "c" or parts[2] != lang or not parts[3]:
        return None
    return normalise(parts[3].replace("_", " "))


def _relation(uri: str) -> str:
    return uri.strip().rstrip("/").split("/")[-1]


def _uri(value) -> str:
    return value.get("@id", "") if isinstance(value, dict) else str(value)


def read_assertions(path: str | os.PathLike) -> list[tuple[int, str, str, str]]:
    """``(line or index, rel, start, end)`` from a ConceptNet CSV (tab-separated
    ``uri rel start end [json]``, as ``conceptnet-assertions-5.7.0.csv``), a JSON list of edges or
    JSON lines (``{"rel": ..., "start": ..., "end": ...}``, URIs or ``{"@id": ...}`` objects)."""
    path = Path(path)
    lines = _read_lines(path)
    first = next((ln.strip() for ln in lines if ln.strip()), "")
    out = []
    if first.startswith("[") or first.startswith("{"):
        if first.startswith("["):
            try:
                records = list(enumerate(json.loads("\n".join(lines)), start=1))
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
        else:
            records = []
            for no, ln in enumerate(lines, start=1):
                if ln.strip():
                    try:
                        records.append((no, json.loads(ln)))
                    except json.JSONDecodeError as e:
                        raise DataError(f"{path}:{no}: not valid JSON ({e.msg})") from None
        for no, rec in records:
            if not isinstance(rec, dict) or not all(k in rec for k in ("rel", "start", "end")):
                raise DataError(f"{path}:{no}: an edge needs 'rel', 'start' and 'end'")
            out.append((no, _relation(_uri(rec["rel"])), _uri(rec["start"]), _uri(rec["end"])))
        return out
    for no, fields in enumerate(csv.reader(lines, delimiter="\t", quoting=csv.QUOTE_NONE), start=1):
        if not fields or not "".join(fields).strip():
            continue
        if len(fields) < 4:
            raise DataError(f"{path}:{no}: expected 'uri<TAB>rel<TAB>start<TAB>end', found {len(fields)} field(s)")
        out.append((no, _relation(fields[1]), fields[2], fields[3]))
    return out


def kg_sentences(assertions: Iterable[tuple[int, str, str, str]], lang: str,
                 predicates: dict[str, str]) -> tuple[list[str], dict[str, int]]:
    """Sentences from assertions, and counts of what was dropped (by reason)."""
    report = {"assertions": 0, "dropped_language": 0, "dropped_relation": 0, "dropped_self_loop": 0}
    out = []
    for _, rel, start, end in assertions:
        report["assertions"] += 1
        s, e = concept_term(start, lang), concept_term(end, lang)
        if s is None or e is None:
            report["dropped_language"] += 1
        elif rel not in predicates:
            report["dropped_relation"] += 1
        elif s == e:
            report["dropped_self_loop"] += 1
        else:
            out.append(f"{s} {predicates[rel]} {e}.")
    return out, report


def read_predicate_map(path: str | os.PathLike) -> dict[str, str]:
    """A JSON object ``{relation: phrase}`` replacing the default map."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) and v.strip()
                                             for k, v in data.items()):
        raise DataError(f"{path}: expected a JSON object mapping relation names to non-empty phrases")
    return {re.sub(r"^/r/", "", k): v.strip() for k, v in data.items()}


def prepare_kg(files: list[str | os.PathLike], lang: str, out_dir: str | os.PathLike,
               predicates: dict[str, str] | None = None, max_lines: int | None = None, seed: int = 0,
               ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> dict:
    """ConceptNet dumps -> deduplicated sentences of language ``lang``, split into ``out_dir``."""
    predicates = PREDICATES if predicates is None else predicates
    sentences: list[str] = []
    report: dict = {}
    for f in files:
        sents, rep = kg_sentences(read_assertions(f), lang, predicates)
        sentences.extend(sents)
        for k, v in rep.items():
            report[k] = report.get(k, 0) + v
    kept, clean = clean_lines(sentences)
    report["dropped_duplicate"] = clean["dropped_duplicate"]
    random.Random(seed).shuffle(kept)
    report["dropped_over_cap"] = max(0, len(kept) - max_lines) if max_lines else 0
    kept = kept[:max_lines] if max_lines else kept
    if not kept:
        raise DataError(f"{', '.join(map(str, files))}: no assertion of language {lang!r} left ({report})")
    report["kept"] = len(kept)
    report["splits"] = write_splits(Path(out_dir), split_lines(kept, seed, ratios))
    return report
