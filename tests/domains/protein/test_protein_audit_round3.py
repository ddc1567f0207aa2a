"""Audit (round 3) of staleness and provenance between the protein commands, through the CLI: ``sample``
refuses a label given twice (it doubled that label's samples) and records its model in every header;
``evaluate`` reports the samples' sampling settings, says when the lengths came from ``--length-prior`` and when
the samples were drawn from another model; ``classify`` warns about queries the model was trained on; an adapter
folder given as ``--model`` is one line; ESM ``score-mutations`` scores a long wild type in a window around each
site (ESM-1v) instead of running past the model's positions; ESM ``classify`` crops to the model's positions and
says how many sequences it cropped; label tables keyed by UniProt accession label ``sp|ACC|NAME`` records."""

import csv
import json

import pytest
import tiny_models
import torch
from protein_stages import cli_stages, one_line_error
from typer.testing import CliRunner

from adaptome.domains.protein.cli import app

runner = CliRunner()
WT = "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQ"  # 33 residues


@pytest.fixture(scope="module")
def stages(tmp_path_factory):
    return cli_stages(tmp_path_factory.mktemp("round3"), 2)


# --- sample -------------------------------------------------------------------------------------------------
def test_sample_refuses_a_label_given_twice(stages, tmp_path):
    out = tmp_path / "g.fa"
    r = runner.invoke(app, ["sample", "--model", str(stages / "s2" / "merged"), "--task-name", "family", "--label",
                            "12TM_1", "--label", "12TM_1", "-n", "2", "--out", str(out)])
    one_line_error(r, "--label", "12TM_1", "twice", "-n")
    assert not out.exists()


def test_sample_headers_name_the_model(stages, tmp_path):
    out = tmp_path / "g.fa"
    model = stages / "s2" / "merged"
    r = runner.invoke(app, ["sample", "--model", str(model), "--task-name", "family", "--label", "12TM_1", "-n", "2",
                            "--max-new-tokens", "8", "--out", str(out)])
    assert r.exit_code == 0, r.output
    heads = [ln for ln in out.read_text().splitlines() if ln.startswith(">")]
    assert len(heads) == 2 and all(h.endswith(f" | model={model}") for h in heads), heads


# --- evaluate -----------------------------------------------------------------------------------------------
def test_evaluate_reports_sampling_settings_length_prior_and_the_samples_model(stages, tmp_path):
    import shutil

    # the stage-2 records were cropped open (no whole lengths): give a copy of the model some to draw from
    model = tmp_path / "s2len"
    shutil.copytree(stages / "s2" / "merged", model)
    info = json.loads((model / "training_data.json").read_text())
    info["label_lengths"] = {"Family": {"12TM_1": [30, 35], "Cyclin_N": [20, 25]}}
    (model / "training_data.json").write_text(json.dumps(info))
    gen = tmp_path / "g.fa"
    r = runner.invoke(app, ["sample", "--model", str(model), "--task-name", "family", "--label",
                            "12TM_1", "--label", "Cyclin_N", "-n", "3", "--length-prior", "--seed", "5",
                            "--out", str(gen)])
    assert r.exit_code == 0, r.output
    # judged with the stage-1 model: the samples are not its own
    rep = tmp_path / "rep"
    r = runner.invoke(app, ["evaluate", "--model", str(stages / "s1" / "merged"), "--samples", str(gen),
                            "--reference", str(stages / "ds" / "sequences.fasta"), "--out", str(rep)])
    assert r.exit_code == 0, r.output
    report = json.loads((rep / "report.json").read_text())
    s = report["sampling"]
    assert s["settings"] == [{"temperature": "0.9", "top_k": "0", "top_p": "0.95", "repetition_penalty": "1.0",
                              "max_new_tokens": s["settings"][0]["max_new_tokens"], "seed": "5",
                              "batch_size": "16", "residues_only": "True", "length_prior": "True",
                              "guidance": "1.0", "prefix": "-"}]
    assert s["length_prior"] is True
    assert s["models"] == [str(model)]
    assert "length prior" in r.output and "not the model's" in r.output
    assert "drawn from" in r.output and str(model) in r.output
    md = (rep / "report.md").read_text()
    assert "length_prior=True" in md and "length prior" in md


def test_evaluate_without_recorded_settings_says_so(stages, tmp_path):
    gen = tmp_path / "g.fa"
    gen.write_text(">gen-0001 condition=Family=<12TM_1> | prefix=- | complete=yes | invalid=0\nMKVLAAGHTWLLAV\n")
    rep = tmp_path / "rep"
    r = runner.invoke(app, ["evaluate", "--model", str(stages / "s2" / "merged"), "--samples", str(gen),
                            "--reference", str(stages / "ds" / "sequences.fasta"), "--out", str(rep)])
    assert r.exit_code == 0, r.output
    assert json.loads((rep / "report.json").read_text())["sampling"]["settings"] == []
    assert "record no sampling settings" in r.output


def test_evaluate_names_the_reference_when_a_label_is_too_small_to_hold_out(stages, tmp_path):
    ref = tmp_path / "ref.fa"
    ref.write_text("".join(f">a{i} Family=<A>\nMKVLAAGHT\n" for i in range(5)) + ">b0 Family=<B>\nMKVLAAGHT\n")
    r = runner.invoke(app, ["evaluate", "--model", str(stages / "s2" / "merged"), "--reference", str(ref),
                            "--out", str(tmp_path / "rep")])
    one_line_error(r, str(ref), "'B'", "1 record", "3 per label")


# --- classify -----------------------------------------------------------------------------------------------
def test_classify_warns_on_queries_the_model_was_trained_on(stages, tmp_path):
    from adaptome.domains.protein.formats import read_fasta_headers

    recs = list(read_fasta_headers(stages / "ds" / "sequences.fasta"))
    queries, train = tmp_path / "q.fa", tmp_path / "t.fa"
    queries.write_text("".join(f">{h}\n{s}\n" for h, s in recs[:4]))
    train.write_text("".join(f">{h}\n{s}\n" for h, s in recs[4:]))
    r = runner.invoke(app, ["classify", "--model", str(stages / "s2" / "merged"), "--fasta", str(queries), "--train",
                            str(train), "--task-name", "family", "--method", "determine", "--out",
                            str(tmp_path / "p.csv")])
    assert r.exit_code == 0, r.output
    assert "warning: 4 of the 4 query sequence(s) are among those" in r.output
    assert "training_data.json" in r.output


# --- an adapter folder as --model ------------------------------------------------------------------------------
def test_an_adapter_folder_as_model_is_one_line(stages, tmp_path):
    adapter = stages / "s2" / "adapter"
    r = runner.invoke(app, ["sample", "--model", str(adapter), "--task-name", "family", "--label", "12TM_1",
                            "--out", str(tmp_path / "g.fa")])
    one_line_error(r, str(adapter), "adapter", str(stages / "s2" / "merged"))
    empty = tmp_path / "empty"
    empty.mkdir()
    r = runner.invoke(app, ["score-mutations", "--model", str(empty), "--out", str(tmp_path / "s.csv")])
    one_line_error(r, str(empty), "config.json")


# --- ESM score-mutations: a wild type longer than the model's positions -----------------------------------------
@pytest.mark.parametrize("positions", ["rotary", "absolute"])
def test_esm_long_wildtype_is_scored_in_a_window_around_each_site(tmp_path, positions):
    from adaptome.domains.protein.model import load_masked_lm

    folder = tmp_path / "esm"
    tiny_models.esm_checkpoint(folder, max_position_embeddings=24, position_embedding_type=positions)
    model, tok = load_masked_lm(str(folder))
    window = 24 - 4  # residues: positions minus <cls>, <eos> and ESM's padding offset of 2
    muts = tmp_path / "m.csv"
    muts.write_text("mutant\nM0W\nS12A\nQ32P\nM0W:Q32P\n")
    out = tmp_path / "s.csv"
    r = runner.invoke(app, ["score-mutations", "--model", str(folder), "--mutants", str(muts), "--wildtype", WT,
                            "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert f"window of {window} residues" in r.output

    def single(ref, pos, alt):
        start = min(max(0, pos - window // 2), len(WT) - window)
        ids = torch.tensor([tok(WT[start:start + window])["input_ids"]])  # (1, window + 2)
        col = 1 + pos - start
        assert ids[0, col] == tok.convert_tokens_to_ids(ref)
        ids[0, col] = tok.mask_token_id
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0, col], -1)  # (V,)
        return float(logp[tok.convert_tokens_to_ids(alt)] - logp[tok.convert_tokens_to_ids(ref)])

    want = [single("M", 0, "W"), single("S", 12, "A"), single("Q", 32, "P")]
    want.append(want[0] + want[2])
    got = [float(row["score"]) for row in csv.DictReader(out.open())]
    assert got == pytest.approx(want, abs=1e-5)


# --- ESM classify: the model's position limit, UniProt accessions ------------------------------------------------
def test_esm_classify_crops_to_the_model_positions_and_reads_uniprot_accessions(tmp_path):
    folder = tmp_path / "esm"
    tiny_models.esm_checkpoint(folder, max_position_embeddings=24)  # at most 20 residues
    seqs = ["MKTAYIAKQRQISFV" * 2, "MWWAYWAKQWQISFV", "MKTAYIAKQRQKSFV", "MWWAYWAKQWQIWFVWWAYWAKQWQIWFV"]
    fa = tmp_path / "t.fa"
    fa.write_text("".join(f">sp|P1000{i}|PROT{i}_HUMAN Protein {i} OS=Homo sapiens OX=9606 GN=G{i} PE=1 SV=1\n{s}\n"
                          for i, s in enumerate(seqs)))
    table = tmp_path / "t.csv"
    table.write_text("id,label\n" + "".join(f"P1000{i},{'ab'[i % 2]}\n" for i in range(4)))  # keyed by accession
    out_dir = tmp_path / "cls"
    r = runner.invoke(app, ["classify", "--model", str(folder), "--train-fasta", str(fa), "--train-labels", str(table),
                            "--fasta", str(fa), "--test-labels", str(table), "--out", str(tmp_path / "p.csv"),
                            "--set", "train.max_steps=2", "--set", "train.warmup_steps=0", "--set",
                            "train.batch_size=2", "--set", "train.progress=false", "--set",
                            f"train.output_dir={out_dir}"])
    assert r.exit_code == 0, r.output
    assert "2 of 4 training sequences and 2 of 4 queries cropped to 20 residues" in r.output
    assert "max_position_embeddings 24" in r.output
    assert json.loads((out_dir / "merged" / "esm_classify.json").read_text())["max_residues"] == 20
    r = runner.invoke(app, ["classify", "--model", str(out_dir / "merged"), "--fasta", str(fa), "--out",
                            str(tmp_path / "p2.csv")])
    assert r.exit_code == 0, r.output
    assert "2 of 4 queries cropped to 20 residues" in r.output


def test_build_dataset_labels_uniprot_ids_by_accession(tmp_path):
    fa = tmp_path / "u.fa"
    fa.write_text(">sp|P69905|HBA_HUMAN Hemoglobin subunit alpha OS=Homo sapiens\nMVLSPADKTNVKAAWGKVGAHAGEY\n"
                  ">tr|A0A024R161|A0A024R161_HUMAN Guanine OS=Homo sapiens\nMKTAYIAKQRQISFVKSHFSRQ\n")
    table = tmp_path / "u.csv"
    table.write_text("id,label\nP69905,globin\nA0A024R161,other\n")
    out = tmp_path / "ds"
    r = runner.invoke(app, ["build-dataset", "--fasta", str(fa), "--labels", str(table), "--task-name", "family",
                            "--out", str(out)])
    assert r.exit_code == 0, r.output
    text = (out / "sequences.fasta").read_text()
    assert "sp|P69905|HBA_HUMAN Family=<globin>" in text and "Family=<other>" in text
    # an id that is neither in the table nor by its accession is still named
    table.write_text("id,label\nP69905,globin\n")
    r = runner.invoke(app, ["build-dataset", "--fasta", str(fa), "--labels", str(table), "--task-name", "family",
                            "--out", str(tmp_path / "ds2")])
    one_line_error(r, "no label", "tr|A0A024R161|A0A024R161_HUMAN")


def test_causal_score_mutations_refuses_a_wild_type_past_the_models_positions(tmp_path):
    """A rotary causal LM scored a wild type longer than its positions without a word."""
    from adaptome.domains.protein.model import load_model_and_tokenizer

    m, tok = load_model_and_tokenizer(None, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2,
                                      max_position_embeddings=64)
    m.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    (tmp_path / "muts.csv").write_text("mutant\nM1A\n")
    for n, ok in ((50, True), (80, False)):
        wt = "M" + "KTAYIAKQRQ" * 8
        out = tmp_path / f"s{n}.csv"
        r = CliRunner().invoke(app, ["score-mutations", "--model", str(tmp_path / "m"), "--mutants",
                                     str(tmp_path / "muts.csv"), "--wildtype", wt[:n], "--offset", "1",
                                     "--out", str(out)])
        if ok:
            assert r.exit_code == 0 and out.is_file(), r.output
        else:
            err = [ln for ln in r.output.splitlines() if ln.startswith("error:")]
            assert r.exit_code == 2 and len(err) == 1, r.output
            assert "longer than this causal LM's 64 positions" in err[0], r.output
            assert not out.exists()
