"""Review (session 13) regressions in multilingual, through ``adaptome multilingual train-task``; each failed before
its fix:

* a space-separated CoNLL line whose token holds a no-break or narrow space (``10\\u202f000 O``) was split at it,
  counted 3 fields and the file refused ("a token holding a space (New York) must be tab-separated");
* a CoNLL-U ``#`` comment after the first sentence got that width error instead of the CoNLL-U message;
* the readers' docstring said NFC "changes no letter" (it replaces canonical duplicates such as the OHM SIGN).
"""

from __future__ import annotations

from adaptome.domains.multilingual import readers

from .conftest import invoke

FAST = ["--max-length", 48, "--batch-size", 8, "--seeds", "1"]


def _ner_train(tiny_base, tmp_path, lines: list[str], out: str):
    path = tmp_path / f"{out}.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path, invoke(["multilingual", "train-task", "--base", tiny_base, "--task", "ner", "--train", path,
                         "--eval", path, "--out", tmp_path / out, "--steps", 1, *FAST])


def test_a_token_holding_a_unicode_space_stays_whole_on_a_space_separated_line(tiny_base, tmp_path):
    lines = ["Musa B-PER", "ya O", "biya O", "10\u202f000 O", "naira O", "", "Ali B-PER", "yana O",
             "Kano\u00a0ta B-LOC", ""]
    _, res = _ner_train(tiny_base, tmp_path, lines, "nbsp")
    assert res.exit_code == 0, res.output  # before: "3 fields ['10', '000', 'O'], but line 1 has 2"
    preds = (tmp_path / "nbsp" / "seed1" / "predictions.tsv").read_text(encoding="utf-8").splitlines()
    tokens = [ln.split("\t")[0] for ln in preds if ln.strip()]
    assert "10\u202f000" in tokens and "Kano\u00a0ta" in tokens, tokens
    # an ASCII space still separates fields
    path, res = _ner_train(tiny_base, tmp_path, ["Musa B-PER", "ya O", "New York B-LOC", ""], "spaces")
    assert res.exit_code == 2 and f"{path}:3: 3 fields" in res.output, res.output


def test_a_conll_u_comment_after_the_first_sentence_gets_the_conll_u_message(tiny_base, tmp_path):
    lines = ["Musa B-PER", "ya O", "", "# sent_id = 2", "Ali B-PER", "yana O", ""]
    path, res = _ner_train(tiny_base, tmp_path, lines, "conllu")
    assert res.exit_code == 2, res.output
    assert f"{path}:4: a CoNLL-U comment line" in res.output and "convert the file" in res.output, res.output
    assert "fields" not in res.output and not (tmp_path / "conllu").exists()


def test_nfc_is_documented_as_replacing_canonical_duplicates(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("\u2126 B-MISC\nya O\n", encoding="utf-8")  # OHM SIGN, NFC: GREEK CAPITAL LETTER OMEGA
    (sent,) = readers.read_conll(path)
    assert sent.words == ["\u03a9", "ya"]
    assert "changes no" not in readers.__doc__ and "OHM SIGN" in readers.__doc__
