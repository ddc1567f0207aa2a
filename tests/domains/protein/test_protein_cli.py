import json
from pathlib import Path

from typer.testing import CliRunner

from adaptome.domains.protein.cli import app
from adaptome.domains.protein.data import data_dir
from adaptome.domains.protein.formats import read_fasta

runner = CliRunner()


def test_build_dataset_from_fasta_and_labels(tmp_path):
    (tmp_path / "s.fa").write_text(">a\nMKRV\n>b\nACDE\n")
    (tmp_path / "l.csv").write_text("id,label\na,Cyclin-like superfamily\nb,SH3-like domain superfamily\n")
    r = runner.invoke(app, ["build-dataset", "--fasta", str(tmp_path / "s.fa"), "--labels", str(tmp_path / "l.csv"),
                            "--vocab", "superfamilies", "--out", str(tmp_path / "ds")])
    assert r.exit_code == 0, r.output
    lines = (tmp_path / "ds" / "instructions.jsonl").read_text().splitlines()
    assert lines[0] == ('{"instruction": "[Generate by superfamily]", '
                        '"input": "Superfamily=<Cyclin-like superfamily>", "output": "Seq=<MKRV>"}')
    assert (tmp_path / "ds" / "sequences.txt").read_text() == "Seq=<MKRV>\nSeq=<ACDE>\n"
    # existing output is never replaced without --overwrite
    r = runner.invoke(app, ["build-dataset", "--shipped", "pfam", "--out", str(tmp_path / "ds")])
    assert r.exit_code == 2 and "already exists" in r.output
    assert len((tmp_path / "ds" / "instructions.jsonl").read_text().splitlines()) == 4


def test_bad_inputs_exit_2_with_the_file_named(tmp_path):
    (tmp_path / "s.fa").write_text(">a\nMKRV\n")
    (tmp_path / "l.csv").write_text("id,label\na,Not a real superfamily\n")
    r = runner.invoke(app, ["build-dataset", "--fasta", str(tmp_path / "s.fa"), "--labels", str(tmp_path / "l.csv"),
                            "--vocab", "superfamilies", "--out", str(tmp_path / "ds")])
    assert r.exit_code == 2 and "l.csv" in r.output and "not in the vocabulary" in r.output
    assert not (tmp_path / "ds").exists()
    (tmp_path / "e.fa").write_text("")
    r = runner.invoke(app, ["build-dataset", "--fasta", str(tmp_path / "e.fa"), "--labels", str(tmp_path / "l.csv"),
                            "--out", str(tmp_path / "ds2")])
    assert r.exit_code == 2 and "e.fa: empty FASTA file" in r.output
    (tmp_path / "bad.yaml").write_text("train_files: []\nblock_sise: 3\n")
    r = runner.invoke(app, ["pretrain", "-c", str(tmp_path / "bad.yaml")])
    assert r.exit_code == 2 and "bad.yaml" in r.output and "block_sise" in r.output


def test_cli_commands_on_the_tuned_model(two_stage_run, tiny_esmfold, tmp_path):
    out, rep = two_stage_run
    model = str(out / "stage2" / "merged")
    r = runner.invoke(app, ["sample", "--model", model, "--task-name", "family", "--label", "Cyclin_N", "-n", "2",
                            "--max-new-tokens", "40", "--out", str(tmp_path / "g.fa")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "g.fa").read_text().count(">gen-") == 2
    assert (tmp_path / "g.fa").read_text().count("residues_only=True") == 2  # the tiny model's `small` preset
    assert all(set(r.seq) <= set("ACDEFGHIKLMNPQRSTVWY") for r in read_fasta(tmp_path / "g.fa", "keep"))
    r = runner.invoke(app, ["sample", "--model", model, "--task-name", "family", "--label", "Cyclin_N", "-n", "2",
                            "--max-new-tokens", "40", "--any-token", "--out", str(tmp_path / "g2.fa")])
    assert r.exit_code == 0 and (tmp_path / "g2.fa").read_text().count("residues_only=False") == 2, r.output
    (tmp_path / "labels.txt").write_text("\n".join(rep["labels"]) + "\n")
    (tmp_path / "q.fa").write_text(">q\n" + (out / "data" / "stage1.fasta").read_text().split("\n")[1] + "\n")
    pfam = data_dir() / "pfam"  # labelled training sequences for the baselines: Stockholm seeds
    r = runner.invoke(app, ["classify", "--model", model, "--fasta", str(tmp_path / "q.fa"), "--labels",
                            str(tmp_path / "labels.txt"), "--task-name", "family", "--out", str(tmp_path / "p.csv"),
                            "--train", str(pfam / "pfam6.seed.txt"), "--train", str(pfam / "pfam8.seed.txt")])
    assert r.exit_code == 0, r.output
    assert "majority class of the training set: Cyclin_N" in r.output
    rows = (tmp_path / "p.csv").read_text().splitlines()
    assert rows[0] == "id,prediction,status,kmer_prediction" and rows[1].split(",")[1] in rep["labels"]
    r = runner.invoke(app, ["score-mutations", "--model", str(out / "stage1" / "merged"),
                            "--out", str(tmp_path / "m.csv")])
    assert r.exit_code == 0 and "Spearman" in r.output, r.output
    assert len((tmp_path / "m.csv").read_text().splitlines()) == 504
    r = runner.invoke(app, ["evaluate", "--model", model, "--samples", str(tmp_path / "g.fa"),
                            "--out", str(tmp_path / "rep"), "--esmfold", str(tiny_esmfold)])
    assert r.exit_code == 0, r.output
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "majority class" in md and "plddt_esmfold: mean" in md
    plddt = json.loads((tmp_path / "rep" / "report.json").read_text())["structure"]["plddt_esmfold"]
    done = [k for k, v in plddt["per_sequence"].items() if v == v]  # not NaN: a non-empty sample
    assert plddt["n"] == len(done) and all(0 <= plddt["per_sequence"][k] <= 100 for k in done)
    assert sorted(p.name for p in (tmp_path / "rep" / "structures").iterdir()) == sorted(f"{k}.pdb" for k in done)


def test_cli_two_stages_from_tiny_configs(tmp_path):
    import yaml

    cfgs = data_dir().parent / "configs"
    r = runner.invoke(app, ["build-dataset", "--shipped", "pfam", "--task-name", "family", "--max-residues", "40",
                            "--out", str(tmp_path / "ds")])
    assert r.exit_code == 0, r.output
    s1 = tmp_path / "s1"
    r = runner.invoke(app, ["pretrain", "-c", str(cfgs / "pretrain_tiny.yaml"), "--set",
                            f"train_files=[{tmp_path / 'ds' / 'sequences.txt'}]", "--set", "train.max_steps=3",
                            "--set", "block_size=64", "--set", f"train.output_dir={s1}",
                            "--set", "train.progress=false"])
    assert r.exit_code == 0, r.output
    assert yaml.safe_load((s1 / "config.yaml").read_text())["train"]["max_steps"] == 3
    r = runner.invoke(app, ["instruct", "-c", str(cfgs / "instruct_tiny.yaml"), "--set",
                            f"train_files=[{tmp_path / 'ds' / 'instructions.jsonl'}]", "--set", "train.max_steps=3",
                            "--set", f"model.name_or_path={s1 / 'merged'}",
                            "--set", f"train.output_dir={tmp_path / 's2'}",
                            "--set", "train.progress=false"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "s2" / "merged" / "tokenizer.json").is_file()


def test_a_programming_error_is_a_traceback_not_a_user_error(tmp_path, monkeypatch):
    """The CLI prints AdaptomeError / OSError as one line; a KeyError (a bug) is not swallowed."""
    from adaptome.domains.protein import stages

    def broken(cfg, overwrite=False):
        return {}["steps"]

    monkeypatch.setattr(stages, "run_stage_config", broken)
    tiny = Path(stages.__file__).parent / "configs" / "pretrain_tiny.yaml"
    r = runner.invoke(app, ["pretrain", "-c", str(tiny),
                            "--set", f"train.output_dir={tmp_path / 's1'}"])
    assert r.exit_code == 1 and isinstance(r.exception, KeyError) and "error:" not in r.output


def test_stage_kwargs_name_every_config_field():
    """The one flattening of a stage config covers every field (none is silently dropped)."""
    import dataclasses
    import inspect

    from adaptome.domains.protein import config, instruct, pretrain
    from adaptome.domains.protein.model import load_model_and_tokenizer

    for cls, fn in ((config.PretrainConfig, pretrain.pretrain), (config.InstructConfig, instruct.instruct)):
        cfg = cls(train_files=["x"])
        kw = config.stage_kwargs(cfg)
        assert set(kw) <= set(inspect.signature(fn).parameters)
        used = {"model", "train"} | {k for k in kw if k in {f.name for f in dataclasses.fields(cls)}}
        used |= {"train_files", "adapter"}  # as files, adapter_method / adapter_options
        used |= {"optimizer"} if "optimizer_name" in kw else set()  # as optimizer_name / optimizer_options
        assert used == {f.name for f in dataclasses.fields(cls)}, cls
    model_params = set(inspect.signature(load_model_and_tokenizer).parameters)
    assert set(config.model_kwargs(config.PretrainConfig())) <= model_params


def test_classify_crops_queries_as_the_model_was_trained(two_stage_run, tmp_path, monkeypatch):
    from adaptome.domains.protein import classify as cl
    from adaptome.domains.protein.training_data import read_training_data

    out, rep = two_stage_run
    model = out / "stage2" / "merged"
    trained = read_training_data(model)["max_seq_length"]
    assert isinstance(trained, int) and trained > 0
    seen = []
    real = cl.classify

    def spy(*args, **kwargs):
        seen.append(kwargs["max_seq_length"])
        return real(*args, **kwargs)

    monkeypatch.setattr(cl, "classify", spy)
    (tmp_path / "q.fa").write_text(">q\n" + (out / "data" / "stage1.fasta").read_text().split("\n")[1] + "\n")
    (tmp_path / "labels.txt").write_text("\n".join(rep["labels"]) + "\n")
    pfam = data_dir() / "pfam"
    base = ["classify", "--fasta", str(tmp_path / "q.fa"), "--labels", str(tmp_path / "labels.txt"), "--task-name",
            "family", "--train", str(pfam / "pfam6.seed.txt"), "--train", str(pfam / "pfam8.seed.txt")]
    r = runner.invoke(app, base + ["--model", str(model), "--out", str(tmp_path / "a.csv")])
    assert r.exit_code == 0 and "does not record" not in r.output, r.output
    r = runner.invoke(app, base + ["--model", str(model), "--max-seq-length", "0", "--out", str(tmp_path / "b.csv")])
    assert r.exit_code == 0, r.output
    bare = tmp_path / "bare"  # the same weights without training_data.json: the documented default, said
    bare.mkdir()
    for f in model.iterdir():
        if f.name != "training_data.json":
            (bare / f.name).symlink_to(f)
    r = runner.invoke(app, base + ["--model", str(bare), "--out", str(tmp_path / "c.csv")])
    assert r.exit_code == 0 and "does not record its instruct max_seq_length" in r.output, r.output
    assert seen == [trained, None, cl.DEFAULT_MAX_SEQ_LENGTH]
