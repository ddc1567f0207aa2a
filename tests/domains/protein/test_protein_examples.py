"""Every example command of the protein README and of each protein command's ``--help`` runs, on a tiny
setup: the commands are parsed out of the text (the README's fenced blocks; in the rendered ``--help``
the lines after ``Example:``, joined at a trailing backslash as a shell would), so a new example is
covered without editing this test.

The tiny setup changes each parsed command in three stated ways only: the ESM hub id is replaced by a
tiny ESM folder (nothing is downloaded here), training commands get ``--set train.max_steps=2``, no warmup and
``train.batch_size=2``, and the ``--help`` examples, which run after the README's in the same folder, get
``--overwrite``; a command that appears in both texts runs once.
"""

import re
import shlex
from pathlib import Path

import tiny_models
from typer.testing import CliRunner

from adaptome.domains.protein import data, formats
from adaptome.domains.protein.cli import app

REPO = Path(__file__).resolve().parents[3]
ESM_HUB_ID = "facebook/esm2_t6_8M_UR50D"
runner = CliRunner()


def readme_examples() -> list[str]:
    text = (REPO / "domains" / "protein" / "README.md").read_text()
    blocks = re.findall(r"^```[a-z]*\n(.*?)^```", text, re.S | re.M)
    return [ln.strip() for b in blocks for ln in b.splitlines() if ln.strip().startswith("adaptome protein ")]


def help_examples() -> dict[str, list[str]]:
    """Command name -> the example commands of its rendered ``--help`` (wide terminal: no wrapping)."""
    out = {}
    for cmd in app.registered_commands:
        name = cmd.name or cmd.callback.__name__
        r = runner.invoke(app, [name, "--help"], env={"COLUMNS": "250"})
        assert r.exit_code == 0, r.output
        lines = [ln.strip() for ln in r.output.splitlines()]
        found = []
        for i, ln in enumerate(lines):
            if ln.startswith("Example:"):
                cmd_text = ln[len("Example:"):].strip()
                while cmd_text.endswith("\\"):
                    i += 1
                    cmd_text = cmd_text[:-1].rstrip() + " " + lines[i]
                found.append(cmd_text)
        out[name] = found
    return out


def _inputs(folder: Path) -> None:
    """seqs.fa + labels.csv, test.fa + test_labels.csv (two ProLLaMA superfamilies), candidates.txt."""
    names = {"Cyclin_N": "Cyclin-like superfamily", "ArsP_1": "SH3-like domain superfamily"}
    fams = [r for r in data.pfam_families(max_residues=48) if r.label in names]
    train, test = data.split_by_label(fams, 2)
    for stem, table, recs in (("seqs", "labels", train), ("test", "test_labels", test)):
        formats.write_fasta(((r.id, r.seq) for r in recs), folder / f"{stem}.fa")
        (folder / f"{table}.csv").write_text("id,label\n" + "".join(f"{r.id},{names[r.label]}\n" for r in recs))
    (folder / "candidates.txt").write_text("".join(f"{v}\n" for v in names.values()))


def _adapt(cmd: str, esm_dir: Path, overwrite: bool) -> list[str]:
    args = shlex.split(cmd)
    assert args[:2] == ["adaptome", "protein"], cmd
    args = [str(esm_dir) if a == ESM_HUB_ID else a for a in args[2:]]
    if args[0] in ("pretrain", "instruct") or (args[0] == "classify" and "--train-fasta" in args):
        args += ["--set", "train.max_steps=2", "--set", "train.warmup_steps=0", "--set", "train.batch_size=2",
                 "--set", "train.progress=false"]
    return args + (["--overwrite"] if overwrite else [])


def test_every_readme_and_help_example_runs(tmp_path, monkeypatch):
    readme, helps = readme_examples(), help_examples()
    assert len(readme) >= 7
    missing = [name for name, found in helps.items() if not found]
    assert not missing, f"commands whose --help has no example: {missing}"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "domains").symlink_to(REPO / "domains")  # the examples name the shipped configs by repo path
    _inputs(tmp_path)
    esm_dir = tmp_path / "tiny_esm"
    tiny_models.esm_checkpoint(esm_dir)
    seen = set()
    for overwrite, cmds in ((False, readme), (True, [c for found in helps.values() for c in found])):
        for cmd in cmds:
            if tuple(shlex.split(cmd)) in seen:  # the same command in both texts runs once
                continue
            seen.add(tuple(shlex.split(cmd)))
            r = runner.invoke(app, _adapt(cmd, esm_dir, overwrite))
            assert r.exit_code == 0, f"{cmd}\n{r.output}"
    assert len(seen) >= 11
    assert (tmp_path / "pred.csv").read_text().startswith("id,prediction,status,kmer_prediction")
    assert (tmp_path / "runs" / "protein" / "esm_classify" / "merged").is_dir()


def test_examples_are_found_in_the_text():
    """The parser sees every command's example (a cut or unparsable one fails here, fast)."""
    helps = help_examples()
    assert set(helps) == {"build-dataset", "pretrain", "instruct", "sample", "classify", "score-mutations",
                          "evaluate"}
    for name, found in helps.items():
        assert found, name
        for cmd in found:
            args = shlex.split(cmd)
            assert args[:3] == ["adaptome", "protein", name], cmd
    pre = helps["pretrain"][0]
    assert pre.endswith("--set train_files=[runs/protein/data/sequences.fasta]")  # not cut at train_files=
    assert "--set train_files=[runs/protein/data/sequences.fasta]" in " ".join(readme_examples())


def test_docs_name_only_real_options_and_messages(tmp_path):
    tasks_yaml = (REPO / "domains" / "protein" / "configs" / "ten_properties.yaml").read_text()
    r = runner.invoke(app, ["build-dataset", "--help"], env={"COLUMNS": "250"})
    for opt in re.findall(r"`[a-z-]+ (--[a-z-]+)`", tasks_yaml):
        assert opt in r.output, f"ten_properties.yaml names {opt}, which build-dataset does not have"
    assert "EC7" in tasks_yaml
    (tmp_path / "ds").mkdir()
    r = runner.invoke(app, ["build-dataset", "--shipped", "pfam", "--out", str(tmp_path / "ds")])
    assert r.exit_code == 2 and "pass --overwrite" in r.output and "overwrite=True" not in r.output
