"""prepare-text (NFC, dedup, cap, split, report) and prepare-kg (ConceptNet -> sentences) on hand-made input,
through the CLI."""

from __future__ import annotations

import json
import unicodedata

from .conftest import invoke


def test_prepare_text_normalises_dedups_caps_and_reports(tmp_path):
    decomposed = unicodedata.normalize("NFD", "Ọmọ náà ń ṣeré")
    assert decomposed != unicodedata.normalize("NFC", decomposed)
    lines = [decomposed, unicodedata.normalize("NFC", decomposed), "", "  a  b   c ", "a b c", "x"] + [
        f"line {i}" for i in range(20)]
    src = tmp_path / "raw.txt"
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    res = invoke(["multilingual", "prepare-text", src, "--out", tmp_path / "out", "--min-chars", 2,
                  "--max-lines", 10])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["read"] == 26 and report["dropped_empty"] == 1 and report["dropped_short"] == 1
    assert report["dropped_duplicate"] == 2  # the NFC twin and the whitespace twin
    assert report["dropped_over_cap"] == 22 - 10 and report["kept"] == 10
    assert report["splits"] == {"train": 8, "validation": 1, "test": 1}
    out = [ln for s in ("train", "validation", "test")
           for ln in (tmp_path / "out" / f"{s}.txt").read_text(encoding="utf-8").splitlines()]
    assert len(out) == len(set(out)) == 10
    assert all(ln == unicodedata.normalize("NFC", ln) and "  " not in ln for ln in out)
    # an existing output is kept unless --overwrite
    res = invoke(["multilingual", "prepare-text", src, "--out", tmp_path / "out"])
    assert res.exit_code == 2 and "already exists" in res.output
    assert json.loads((tmp_path / "out" / "report.json").read_text()) == report


CSV_DUMP = "\n".join([
    "/a/1\t/r/IsA\t/c/sw/mbwa/n\t/c/sw/mnyama\t{}",
    "/a/2\t/r/PartOf\t/c/sw/mkono\t/c/sw/mwili_wa_binadamu/n\t{}",
    "/a/3\t/r/Synonym\t/c/sw/gari\t/c/sw/gari/n\t{}",  # self-loop after stripping
    "/a/4\t/r/IsA\t/c/sw/paka\t/c/en/cat\t{}",  # crosses languages
    "/a/5\t/r/ExternalURL\t/c/sw/paka\t/c/sw/paka_mwitu\t{}",  # relation not in the map
    "/a/6\t/r/HasA\t/c/en/dog\t/c/en/tail\t{}",
]) + "\n"


def test_prepare_kg_csv(tmp_path):
    dump = tmp_path / "assertions.csv"
    dump.write_text(CSV_DUMP, encoding="utf-8")
    res = invoke(["multilingual", "prepare-kg", dump, "--lang", "sw", "--out", tmp_path / "kg"])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "kg" / "report.json").read_text())
    assert report["assertions"] == 6 and report["dropped_language"] == 2
    assert report["dropped_self_loop"] == 1 and report["dropped_relation"] == 1 and report["kept"] == 2
    sents = sorted(ln for s in ("train", "validation", "test")
                   for ln in (tmp_path / "kg" / f"{s}.txt").read_text(encoding="utf-8").splitlines())
    assert sents == ["mbwa is a type of mnyama.", "mkono is a part of mwili wa binadamu."]


def test_prepare_kg_json_and_predicate_map(tmp_path):
    dump = tmp_path / "edges.json"
    dump.write_text(json.dumps([{"rel": {"@id": "/r/IsA"}, "start": {"@id": "/c/yo/ajá"}, "end": "/c/yo/ẹranko"},
                                {"rel": "/r/RelatedTo", "start": "/c/yo/omi", "end": "/c/yo/odò"}]), encoding="utf-8")
    pmap = tmp_path / "map.json"
    pmap.write_text(json.dumps({"/r/IsA": "jẹ́ irú"}), encoding="utf-8")
    res = invoke(["multilingual", "prepare-kg", dump, "--lang", "yo", "--out", tmp_path / "kg",
                  "--predicate-map", pmap])
    assert res.exit_code == 0, res.output
    text = "".join((tmp_path / "kg" / f"{s}.txt").read_text(encoding="utf-8") for s in ("train", "validation", "test"))
    assert text == "ajá jẹ́ irú ẹranko.\n"  # RelatedTo is not in the custom map: dropped
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"rel": "/r/IsA", "start": "/c/yo/a", "end": "/c/yo/b"}\n{"rel": "/r/IsA"\n', encoding="utf-8")
    res = invoke(["multilingual", "prepare-kg", bad, "--lang", "yo", "--out", tmp_path / "kg2"])
    assert res.exit_code == 2 and "bad.jsonl:2: not valid JSON" in res.output
    assert not (tmp_path / "kg2").exists()
