"""No instruction record loses its answer to the token limit: the protein is cropped, the answer kept.

With the character tokenizer a record of prompt P and answer A takes 1 (``<s>``) + len(P) + len(A)
+ 1 (``</s>``) tokens, 1 + len(P) + len(A) when A is an open ``Seq=<...`` (no ``</s>``); the crops
below are checked against that count written out by hand.
"""

import json

import pytest
from typer.testing import CliRunner

from adaptome.domains.protein import data, instruct
from adaptome.domains.protein.cli import app
from adaptome.domains.protein.formats import FormatError, Record, prompt_of
from adaptome.domains.protein.tokenizer import build_tokenizer

runner = CliRunner()
LONG = ("MKTAYIAKQRQISFVKSHFSRQ" * 30)[:600]  # 600 residues
SHORT = "MKRVLLAGHEW"


def _hand_tokens(rec: dict) -> int:
    open_answer = rec["output"].startswith("Seq=<") and not rec["output"].endswith(">")
    return 1 + len(prompt_of(rec)) + len(rec["output"]) + (0 if open_answer else 1)


def test_build_dataset_crops_the_protein_never_the_answer(tmp_path):
    (tmp_path / "s.fa").write_text(f">long\n{LONG}\n>short\n{SHORT}\n")
    (tmp_path / "l.csv").write_text("id,label\nlong,Pkinase\nshort,SH3_1\n")
    limit = 120
    r = runner.invoke(app, ["build-dataset", "--fasta", str(tmp_path / "s.fa"), "--labels", str(tmp_path / "l.csv"),
                            "--task-name", "family", "--max-seq-length", str(limit), "--out", str(tmp_path / "ds")])
    assert r.exit_code == 0, r.output
    recs = [json.loads(x) for x in (tmp_path / "ds" / "instructions.jsonl").read_text().splitlines()]
    assert len(recs) == 4
    gen_long, det_long, gen_short, det_short = recs
    # every record fits, its answer whole (hand count, and the encoder the instruct stage uses)
    tok = build_tokenizer()
    for rec in recs:
        assert _hand_tokens(rec) <= limit
        item = instruct.encode_record(tok, rec, limit)
        assert len(item["input_ids"]) == _hand_tokens(rec)
    assert det_long["output"] == "Family=<Pkinase>" and det_short["output"] == "Family=<SH3_1>"
    # the understanding record keeps the longest prefix beside the widest answer ("Family=<Pkinase>"):
    # 1 + len("[Determine family] Seq=<") + k + len(">") + len("Family=<Pkinase>") + 1 = limit
    k = limit - 2 - len("[Determine family] Seq=<") - 1 - len("Family=<Pkinase>")
    assert det_long["input"] == f"Seq=<{LONG[:k]}>"
    # the generation answer is the longest prefix that fits, left open (no '>', no </s>): the
    # prompt is the widest one ("[Generate by family] Family=<Pkinase>")
    k_gen = limit - 1 - len("[Generate by family] Family=<Pkinase>") - len("Seq=<")
    assert gen_long["output"] == f"Seq=<{LONG[:k_gen]}"
    assert gen_short == {"instruction": "[Generate by family]", "input": "Family=<SH3_1>",
                         "output": f"Seq=<{SHORT}>"}
    assert det_short["input"] == f"Seq=<{SHORT}>"
    # the crop is printed, not hidden; sequences.txt keeps the whole proteins
    assert (f"cropped 2 of 4 records (1 of 2 proteins) to fit {limit} tokens: "
            f"{(600 - k) + (600 - k_gen)} residues removed") in r.output
    assert (tmp_path / "ds" / "sequences.txt").read_text() == f"Seq=<{LONG}>\nSeq=<{SHORT}>\n"
    # with room for everything nothing is cropped, and the output says so
    r = runner.invoke(app, ["build-dataset", "--fasta", str(tmp_path / "s.fa"), "--labels", str(tmp_path / "l.csv"),
                            "--task-name", "family", "--max-seq-length", "1000", "--out", str(tmp_path / "ds2")])
    assert r.exit_code == 0 and "no record cropped: all 4 fit 1000 tokens" in r.output, r.output


def test_a_limit_with_no_room_for_a_residue_is_an_error_and_writes_nothing(tmp_path):
    (tmp_path / "s.fa").write_text(f">long\n{LONG}\n")
    (tmp_path / "l.csv").write_text("id,label\nlong,Pkinase\n")
    r = runner.invoke(app, ["build-dataset", "--fasta", str(tmp_path / "s.fa"), "--labels", str(tmp_path / "l.csv"),
                            "--task-name", "family", "--max-seq-length", "30", "--out", str(tmp_path / "ds")])
    assert r.exit_code == 2 and "max_seq_length 30 leaves no room" in r.output
    assert not (tmp_path / "ds").exists()


def test_instruct_fits_records_read_from_other_files():
    """Records not written by build-dataset (ProLLaMA's own JSON) are fitted by the instruct stage."""
    tok = build_tokenizer()
    det = {"instruction": "[Determine superfamily]", "input": f"Seq=<{LONG}>", "output": "Superfamily=<X-like>"}
    gen = {"instruction": "[Generate by superfamily]", "input": "Superfamily=<X-like>", "output": f"Seq=<{LONG}>"}
    ok = {"instruction": "[Determine superfamily]", "input": f"Seq=<{SHORT}>", "output": "Superfamily=<X-like>"}
    ds = instruct.InstructionDataset(tok, [det, gen, ok], 100)
    assert ds.n_cropped == 2
    answer = tok("Superfamily=<X-like>", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    d_ids, d_lab = ds.items[0]["input_ids"], ds.items[0]["labels"]
    assert len(d_ids) == 100 and d_lab[-len(answer):] == answer  # the whole answer and its </s>
    assert all(x == instruct.IGNORE for x in d_lab[:-len(answer)])
    g_ids = ds.items[1]["input_ids"]
    assert len(g_ids) <= 100 and g_ids[-1] != tok.eos_token_id  # an open crop gets no </s>
    assert tok.decode(g_ids, skip_special_tokens=True).endswith("Seq=<" + LONG[:100 - 1 - len(prompt_of(gen)) - 5])
    assert ds.items[2]["input_ids"][-1] == tok.eos_token_id
    assert ds.residues_cropped == (600 - (100 - 2 - len("[Determine superfamily] Seq=<>Superfamily=<X-like>"))
                                   + 600 - (100 - 1 - len(prompt_of(gen)) - 5))
    free = {"instruction": "Summarise", "input": "x" * 200, "output": "short"}
    with pytest.raises(FormatError, match="instruction record 1: .* no Seq=<...> to crop; its answer would be cut"):
        instruct.InstructionDataset(tok, [free], 100)


def test_instruct_cli_prints_the_cropped_count(tmp_path, monkeypatch):
    """The real record path of ``adaptome protein instruct`` (training itself stubbed out: not under test)."""
    from adaptome.domains.protein import pretrain

    seen = {}

    def no_training(model, tok, dataset, *args, **kwargs):
        seen["dataset"] = dataset
        return {"steps": 0, "trainable": {"percent": 0.0}, "adapter": "-"}

    monkeypatch.setattr(pretrain, "run_stage", no_training)
    det = {"instruction": "[Determine family]", "input": f"Seq=<{LONG}>", "output": "Family=<A>"}
    ok = {"instruction": "[Determine family]", "input": f"Seq=<{SHORT}>", "output": "Family=<B>"}
    (tmp_path / "i.jsonl").write_text(json.dumps(det) + "\n" + json.dumps(ok) + "\n")
    cfg = data.data_dir().parent / "configs" / "instruct_tiny.yaml"
    r = runner.invoke(app, ["instruct", "-c", str(cfg), "--set", f"train_files=[{tmp_path / 'i.jsonl'}]",
                            "--set", "max_seq_length=64", "--set", f"train.output_dir={tmp_path / 's2'}"])
    assert r.exit_code == 0, r.output
    removed = 600 - (64 - 2 - len("[Determine family] Seq=<>Family=<A>"))
    assert f"1 of 2 records cropped to max_seq_length 64 ({removed} residues" in r.output
    assert [len(it["input_ids"]) for it in seen["dataset"].items] == [64, 2 + len(prompt_of(ok)) + len("Family=<B>")]


def test_classify_crops_a_query_exactly_as_build_dataset_cropped_its_record(tiny, monkeypatch):
    """The prompts ``classify`` scores for a long query are the training records' prompts."""
    from adaptome.domains.protein import classify

    tok = build_tokenizer()
    recs = [Record("long", LONG, "Pkinase"), Record("short", SHORT, "SH3_1")]
    written, _ = data.fit_instruction_records(recs, data.FAMILY, tok, 120)
    seen = []
    monkeypatch.setattr(classify, "score_targets", lambda m, t, pairs, *a, **k: seen.extend(pairs) or
                        [(0.0, 1)] * len(pairs))
    classify.classify(tiny[0], tok, data.FAMILY, [LONG], ["Pkinase", "SH3_1"], "combined", max_seq_length=120)
    det = [p for p in seen if p[0].startswith("[Determine")]
    gen = [p for p in seen if p[0].startswith("[Generate")]
    assert {p[0] for p in det} == {prompt_of(written[1])}  # '[Determine family] Seq=<crop>'
    assert sorted(det)[0][1] == written[1]["output"]  # Family=<Pkinase>
    assert {p[1] for p in gen} == {written[0]["output"]}  # the same open crop 'Seq=<MKT...'
