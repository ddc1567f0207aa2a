import json

import pytest

from adaptome.domains.protein import data, formats
from adaptome.domains.protein.formats import FormatError, LabelError, ResidueError

EXAMPLE = data.data_dir() / "prollama" / "example.json"


def test_seq_lines_round_trip_exactly(tmp_path):
    seqs = ["MKRVLA", "EDAIIWHEFCQ", "A"]
    p = formats.write_seq_lines(seqs, tmp_path / "s.txt")
    assert p.read_text() == "Seq=<MKRVLA>\nSeq=<EDAIIWHEFCQ>\nSeq=<A>\n"
    assert formats.read_seq_lines(p) == seqs


def test_prollama_example_json_round_trips_through_jsonl(tmp_path):
    recs = formats.read_instructions(EXAMPLE)
    assert recs == json.loads(EXAMPLE.read_text())
    assert recs[0]["instruction"] == "[Determine superfamily]"
    p = formats.write_instructions(recs, tmp_path / "x.jsonl")
    assert formats.read_instructions(p) == recs
    first = p.read_text().splitlines()[0]
    assert first.startswith('{"instruction": "[Determine superfamily]", "input": "Seq=<EDAIIW')


def test_builder_reproduces_prollama_records():
    rec = formats.read_instructions(EXAMPLE)
    seq = formats.parse_seq_line(rec[0]["input"])
    label = formats.parse_field(rec[0]["output"], "Superfamily")[1]
    built = data.instruction_records([formats.Record("x", seq, label)], data.SUPERFAMILY)
    assert built == [rec[1], rec[0]]  # generate first, then determine
    assert (data.SUPERFAMILY.generate_prompt(label)
            == "[Generate by superfamily] Superfamily=<Gnk2-homologous domain superfamily>")
    assert data.SUPERFAMILY.generate_prompt(None, "MK") == "Seq=<MK"
    # a prefix continues the training text of a generation record: no separator before the answer's Seq=<
    assert data.EC_CLASS.generate_prompt("EC3", "MK") == "[Generate by enzyme class] EC=<EC3>Seq=<MK"
    assert data.EC_CLASS.generate_prompt("EC3", open_seq=True) == "[Generate by enzyme class] EC=<EC3>Seq=<"
    r = data.instruction_records([formats.Record("x", "MKV", "EC3")], data.EC_CLASS, ("generate",))[0]
    assert formats.prompt_of(r) + r["output"] == data.EC_CLASS.generate_prompt("EC3", "MKV") + ">"


def test_fasta_round_trip_and_stockholm_counts(tmp_path):
    recs = [("a desc", "MKRV" * 20), ("b", "ACDE")]
    p = formats.write_fasta(recs, tmp_path / "x.fa")
    back = formats.read_fasta(p)
    assert [(r.id, r.seq) for r in back] == [("a", "MKRV" * 20), ("b", "ACDE")]
    assert formats.read_fasta_headers(p) == recs
    fam = formats.read_stockholm(data.data_dir() / "pfam" / "pfam8.seed.txt")
    assert (fam.id, fam.accession, fam.clan, len(fam.records)) == ("Cyclin_N", "PF00134.25", "CL0065", 95)
    assert all(123 <= len(r.seq) <= 153 and set(r.seq) <= set(formats.STANDARD_AA) for r in fam.records)


def test_residue_policy_and_empty_input(tmp_path):
    p = tmp_path / "x.fa"
    p.write_text(">a\nMKXV\n>b\nMKV*\n")
    with pytest.raises(ResidueError, match=r"x.fa: record 'a': non-standard residue 'X' at position 3"):
        formats.read_fasta(p)
    assert [r.seq for r in formats.read_fasta(p, "skip")] == ["MKV"]
    assert [r.seq for r in formats.read_fasta(p, "keep")] == ["MKXV", "MKV"]
    (tmp_path / "digit.fa").write_text(">a\nMK1V\n")
    with pytest.raises(ResidueError):
        formats.read_fasta(tmp_path / "digit.fa", "keep")
    (tmp_path / "empty.fa").write_text("\n")
    with pytest.raises(FormatError, match="empty.fa: empty FASTA file"):
        formats.read_fasta(tmp_path / "empty.fa")
    (tmp_path / "norec.fa").write_text(">a\n\n>b\nMK\n")
    with pytest.raises(FormatError, match="record 'a': empty sequence"):
        formats.read_fasta(tmp_path / "norec.fa")
    (tmp_path / "bad.jsonl").write_text('{"instruction": "x", "input": "y"}\n')
    with pytest.raises(FormatError, match="bad.jsonl:1"):
        formats.read_instructions(tmp_path / "bad.jsonl")
    with pytest.raises(FormatError, match="expected Seq=<...>"):
        formats.parse_seq_line("Superfamily=<x>")


def test_shipped_superfamily_vocab_validates_labels():
    vocab = data.superfamily_vocab()
    assert len(vocab) == 11268 and vocab[0] == "Gnk2-homologous domain superfamily"
    formats.validate_labels(["Cyclin-like superfamily", "NAD(P)-binding domain superfamily"], vocab)
    with pytest.raises(LabelError, match="closest known: .*Cyclin-like superfamily"):
        formats.validate_labels(["Cyclin like superfamily"], vocab, "labels.csv")


def test_label_table_attach_and_split(tmp_path):
    (tmp_path / "l.csv").write_text("id,label\na,Cyclin-like superfamily\n")
    table = data.read_label_table(tmp_path / "l.csv")
    recs = data.attach_labels([formats.Record("a", "MK")], table, "l.csv", data.superfamily_vocab())
    assert recs[0].label == "Cyclin-like superfamily"
    with pytest.raises(FormatError, match="no label for 1 record"):
        data.attach_labels([formats.Record("zz", "MK")], table, "l.csv")
    fams = data.pfam_families()
    train, test = data.split_by_label(fams, 3)
    assert len(test) == 15 and not {r.id for r in train} & {r.id for r in test}
    ec = data.ec_records()
    assert sorted({r.label for r in ec}) == [f"EC{i}" for i in range(1, 7)]


def test_ten_property_setup_is_configuration():
    tasks = data.load_tasks(data.data_dir().parent / "configs" / "ten_properties.yaml")
    prompts = [t.generate_prompt(lab) for t, labels in tasks for lab in labels]
    assert len(prompts) == 11  # the paper's ten properties and EC7 (translocases)
    assert prompts[0] == "[Generate by superfamily] Superfamily=<SAM-MT>"
    assert prompts[-1] == "[Generate by enzyme class] EC=<EC7>"
    assert tasks[1][0].determine_prompt("MK") == "[Determine enzyme class] Seq=<MK>"


def test_shipped_configs_carry_prollama_defaults():
    from adaptome.core.config import ConfigError, load_config
    from adaptome.domains.protein.config import InstructConfig, PretrainConfig

    cfgs = data.data_dir().parent / "configs"
    p = load_config(PretrainConfig, cfgs / "pretrain.yaml")
    assert (p.adapter.method, p.adapter.options["r"], p.adapter.options["lora_alpha"]) == ("lora", 128, 256.0)
    assert p.adapter.options["modules_to_save"] == ["embed_tokens", "lm_head"]
    assert len(p.adapter.options["target_modules"]) == 7
    assert (p.block_size, p.train.lr, p.train.schedule) == (2048, 5e-5, "cosine")
    i = load_config(InstructConfig, cfgs / "instruct.yaml")
    assert (i.adapter.options["r"], i.adapter.options["lora_alpha"], i.max_seq_length) == (64, 128.0, 256)
    assert "modules_to_save" not in i.adapter.options
    tiny = load_config(PretrainConfig, cfgs / "pretrain_tiny.yaml")
    assert tiny.model.name_or_path is None and tiny.adapter.options["r"] == 16
    with pytest.raises(ConfigError, match="train.max_stepz"):
        load_config(PretrainConfig, cfgs / "pretrain_tiny.yaml", ["train.max_stepz=3"])
