"""Target selection as a user meets it through ``adaptome train``: each test failed before its fix.

* a ``target_modules`` list entry that matches no linear (a typo, or an ``nn.Embedding``) was dropped
  silently while the other entries trained;
* an adapter on a linear whose weight is tied to another module (a tied LM head) trained, but merging
  it also changed the tied embedding, so ``merged/`` did not give the adapter's outputs;
* a LoRA-XS / LaMDA rank above a layer's min(out, in) was a traceback instead of one line naming the layer.
"""

import pytest
import tiny_models as tiny
import yaml
from typer.testing import CliRunner

from adaptome.core import cli
from adaptome.core.adapters.api import apply_adapter, make_config
from adaptome.core.adapters.targets import TargetError

runner = CliRunner()
TINY = {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64}


def _config(tmp_path, adapter, model=None) -> str:
    lines = ["the cat sat on the mat and looked at the dog", "a small red ball rolled far away from home"] * 8
    (tmp_path / "lines.txt").write_text("\n".join(lines) + "\n")
    cfg = {
        "model": model or {"kind": "causal", "tiny": TINY},
        "data": {"train_files": [str(tmp_path / "lines.txt")], "block_size": 32},
        "adapter": adapter,
        "train": {"output_dir": str(tmp_path / "run"), "max_steps": 1, "batch_size": 4, "lr": 0.01,
                  "progress": False, "threads": 1},
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def _train(tmp_path, adapter, model=None):
    return runner.invoke(cli.app, ["train", "-c", _config(tmp_path, adapter, model)])


@pytest.mark.parametrize("method", ["lora_native", "lora"])
def test_a_list_entry_that_matches_no_linear_is_an_error(tmp_path, method):
    res = _train(tmp_path, {"method": method, "options": {"r": 2, "target_modules": ["q_prj", "v_proj"]}})
    assert res.exit_code == 2, res.output
    assert "'q_prj'" in res.output and "matched no module" in res.output
    assert not (tmp_path / "run" / "adapter").exists()


def test_a_list_entry_that_names_an_embedding_says_so(tmp_path):
    res = _train(tmp_path, {"method": "nola", "options": {"r": 2, "target_modules": ["q_proj", "embed_tokens"]}})
    assert res.exit_code == 2, res.output
    assert "'embed_tokens'" in res.output and "Embedding" in res.output


def test_presets_and_globs_still_resolve():
    m = tiny.bert(seed=0)
    # the BERT preset holds glob entries; an all-matching user list with a glob is fine too
    apply_adapter(m, make_config("lora_native", {"r": 2, "target_modules": "attention+mlp"}))
    m2 = tiny.bert(seed=0)
    apply_adapter(m2, make_config("lora_native", {"r": 2, "target_modules": ["query", "layer.*.output.dense"]}))


def _tied_model(tmp_path):
    return {"name_or_path": str(tiny.tied_llama_checkpoint(tmp_path / "tied")), "kind": "causal"}


@pytest.mark.parametrize("method", ["lora_native", "dylora", "lora"])
def test_a_tied_target_is_refused_naming_the_tie(tmp_path, method):
    res = _train(tmp_path, {"method": method, "options": {"r": 2, "target_modules": ["lm_head", "q_proj"]}},
                 model=_tied_model(tmp_path))
    assert res.exit_code == 2, res.output
    assert "lm_head" in res.output and "model.embed_tokens" in res.output and "tied" in res.output
    assert not (tmp_path / "run" / "merged").exists()


def test_untied_targets_of_a_tied_model_still_train(tmp_path):
    res = _train(tmp_path, {"method": "lora_native", "options": {"r": 2, "target_modules": "attention"}},
                 model=_tied_model(tmp_path))
    assert res.exit_code == 0, res.output


@pytest.mark.parametrize("method", ["loraxs", "lamda"])
def test_a_rank_above_a_layer_dimension_is_one_line_naming_the_layer(tmp_path, method):
    res = _train(tmp_path, {"method": method, "options": {"r": 40, "target_modules": "attention"}})
    assert res.exit_code == 2, res.output
    assert "q_proj" in res.output and "rank 40 exceeds" in res.output and "Traceback" not in res.output


def test_library_error_type_is_kept():
    import tiny_models as tiny

    with pytest.raises(TargetError, match="q_prj"):
        apply_adapter(tiny.llama(seed=0), make_config("lora_native", {"r": 2, "target_modules": ["q_prj", "v_proj"]}))


def test_a_lamda_rank_pattern_key_that_names_no_layer_is_an_error(tmp_path):
    res = _train(tmp_path, {"method": "lamda", "options": {"r": 4, "rank_pattern": {"q_prj": 2},
                                                           "target_modules": "attention"}})
    assert res.exit_code == 2, res.output
    assert "rank_pattern" in res.output and "'q_prj'" in res.output


def test_a_misspelt_exclude_entry_is_an_error(tmp_path):
    """Before, ``exclude_modules: [o_prj]`` left ``o_proj`` adapted without a word."""
    res = _train(tmp_path, {"method": "lora_native", "options": {"r": 2, "target_modules": "attention",
                                                                 "exclude_modules": ["o_prj"]}})
    assert res.exit_code == 2, res.output
    assert "exclude_modules entry 'o_prj'" in res.output


def test_a_bottleneck_list_entry_that_names_no_block_is_an_error(tmp_path):
    """Before, ``target_modules: [layers.0.mlp, layers.7.mlp]`` on a 2-layer model trained block 0 only."""
    res = _train(tmp_path, {"method": "seq_bn", "options": {"reduction_factor": 4,
                                                            "target_modules": ["layers.0.mlp", "layers.7.mlp"]}})
    assert res.exit_code == 2, res.output
    assert "'layers.7.mlp' names no FFN block" in res.output
