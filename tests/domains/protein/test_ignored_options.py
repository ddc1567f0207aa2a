"""``protein sample --temperature 0`` decodes greedily: a ``--top-k`` / ``--top-p`` given beside it was dropped
without a word (and written into every FASTA header as if used). It is now refused naming the flags; greedy
decoding alone, and top-k / top-p with a temperature, stay silent. The refusal failed before the fix."""

from __future__ import annotations

from typer.testing import CliRunner

from adaptome.domains.protein.cli import app

runner = CliRunner()


def _sample(model, out, *args):
    return runner.invoke(app, ["sample", "--model", str(model), "-n", "1", "--max-new-tokens", "4", "--out", str(out),
                               *map(str, args)])


def test_sample_refuses_top_k_and_top_p_with_greedy_decoding(tiny, tmp_path):
    model, tok = tiny
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    res = _sample(tmp_path / "m", tmp_path / "g.fasta", "--temperature", 0, "--top-k", 5, "--top-p", 0.5)
    assert res.exit_code == 2, res.output
    assert "--top-k 5 and --top-p 0.5: no effect with --temperature 0" in res.output
    assert not (tmp_path / "g.fasta").exists()
    res = _sample(tmp_path / "m", tmp_path / "g.fasta", "--temperature", 0)
    assert res.exit_code == 0 and "no effect" not in res.output, res.output
    # the 'off' values, what scripts pass for plain greedy decoding, are not refused (review 3)
    res = _sample(tmp_path / "m", tmp_path / "g0.fasta", "--temperature", 0, "--top-k", 0, "--top-p", 1.0)
    assert res.exit_code == 0 and "no effect" not in res.output, res.output
    res = _sample(tmp_path / "m", tmp_path / "s.fasta", "--temperature", 0.8, "--top-k", 5)
    assert res.exit_code == 0 and "no effect" not in res.output, res.output
