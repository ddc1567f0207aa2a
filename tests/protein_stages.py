"""The two protein stages through the CLI on a tiny model, for tests that need a trained pair of folders, and
the check that a protein command stopped with one error line."""


def one_line_error(r, *needles):
    """A CLI result that exited 2 with exactly one ``error:`` line holding every needle; returns the line."""
    assert r.exit_code == 2, r.output
    err = [ln for ln in r.output.splitlines() if ln.startswith("error:")]
    assert len(err) == 1, r.output
    for needle in needles:
        assert needle in err[0], err[0]
    return err[0]


def cli_stages(tmp, steps: int, stage1_file: str = "sequences.txt"):
    """build-dataset -> pretrain -> instruct (``steps`` each) through the CLI on the shipped Pfam families cropped
    to 40 residues, with a 1-layer, 32-wide model; returns ``tmp`` (``ds/``, ``s1/``, ``s2/``)."""
    from typer.testing import CliRunner

    from adaptome.domains.protein.cli import app
    from adaptome.domains.protein.data import data_dir

    runner = CliRunner()
    cfgs = data_dir().parent / "configs"
    r = runner.invoke(app, ["build-dataset", "--shipped", "pfam", "--task-name", "family", "--max-residues", "40",
                            "--out", str(tmp / "ds")])
    assert r.exit_code == 0, r.output
    common = ["--set", f"train.max_steps={steps}", "--set", "train.progress=false", "--set", "model.hidden_size=32",
              "--set", "model.intermediate_size=64", "--set", "model.num_layers=1", "--set", "model.num_heads=2"]
    r = runner.invoke(app, ["pretrain", "-c", str(cfgs / "pretrain_tiny.yaml"), "--set",
                            f"train_files=[{tmp / 'ds' / stage1_file}]", "--set", "block_size=64",
                            "--set", f"train.output_dir={tmp / 's1'}", *common])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["instruct", "-c", str(cfgs / "instruct_tiny.yaml"), "--set",
                            f"train_files=[{tmp / 'ds' / 'instructions.jsonl'}]", "--set",
                            f"model.name_or_path={tmp / 's1' / 'merged'}", "--set", f"train.output_dir={tmp / 's2'}",
                            *common[:4]])
    assert r.exit_code == 0, r.output
    return tmp
