"""The tiny base (an XLM-R architecture built from config, saved, loaded by path through the CLI), masking,
batched pseudo-perplexity equal to the one-forward-per-token computation, and a language adapter that
lowers held-out pseudo-perplexity."""

from __future__ import annotations

import json
import math

import tiny_models
import torch

from adaptome.domains.multilingual.base import load_base
from adaptome.domains.multilingual.mlm import (
    MaskingCollator,
    TextDataset,
    encoder_and_head,
    pseudo_perplexity,
    pseudo_perplexity_naive,
)
from adaptome.domains.multilingual.readers import read_text

from .conftest import invoke


def test_tiny_base_is_a_transformers_xlmr_folder(tiny_base):
    from transformers import XLMRobertaForMaskedLM

    cfg = json.loads((tiny_base / "config.json").read_text())
    assert cfg["model_type"] == "xlm-roberta" and (tiny_base / "tokenizer.json").is_file()
    tok, model = load_base(str(tiny_base))
    assert isinstance(model, XLMRobertaForMaskedLM) and tok.mask_token == "<mask>"
    pre = json.loads((tiny_base / "pretraining.json").read_text())
    assert pre["loss_last"] < pre["loss_first"]  # pretraining learned something


def test_masking_collator_rates_and_whole_words(tiny_base, text_splits):
    tok, _ = load_base(str(tiny_base), None)
    lines = read_text(text_splits / "hau" / "train.txt")[:400]
    data = TextDataset(lines, tok, 48)
    torch.manual_seed(0)
    batch = MaskingCollator(tok, 0.15)([data[i] for i in range(len(data))])
    special = torch.isin(batch["input_ids"], torch.tensor(tok.all_special_ids)) & (batch["labels"] == -100)
    chosen = batch["labels"] != -100
    scorable = batch["attention_mask"].bool() & ~special
    rate = chosen.sum() / scorable.sum()
    assert 0.13 < rate < 0.19, rate
    masked = (batch["input_ids"] == tok.mask_token_id) & chosen
    assert 0.75 < masked.sum() / chosen.sum() < 0.85
    assert not (chosen & (batch["attention_mask"] == 0)).any()
    # whole words: every subword of a chosen word is chosen
    torch.manual_seed(0)
    coll = MaskingCollator(tok, 0.15, whole_word=True)
    for i in range(50):
        item = data[i]
        ch = coll.choose(item)
        for w in {w for w, c in zip(item["word_ids"], ch) if c}:
            assert all(c for ww, c in zip(item["word_ids"], ch) if ww == w)
        assert any(ch)


def test_batched_pseudo_perplexity_equals_one_forward_per_token(tiny_base, text_splits):
    tok, model = load_base(str(tiny_base))
    sents = read_text(text_splits / "yor" / "test.txt")[:6]
    batched = pseudo_perplexity(model, tok, sents, 48, max_batch=64)
    chunked = pseudo_perplexity(model, tok, sents, 48, max_batch=5)
    naive = pseudo_perplexity_naive(model, tok, sents, 48)
    assert math.isclose(batched, naive, rel_tol=1e-4) and math.isclose(chunked, naive, rel_tol=1e-4)
    # explicit formula for one sentence: exp(mean over non-special tokens of -log P(token | rest))
    ids = tok(sents[0], truncation=True, max_length=48)["input_ids"]
    nll = []
    for t in range(1, len(ids) - 1):
        x = torch.tensor([ids])
        x[0, t] = tok.mask_token_id
        with torch.no_grad():
            nll.append(-torch.log_softmax(model(input_ids=x).logits[0, t], -1)[ids[t]].item())
    assert math.isclose(pseudo_perplexity(model, tok, sents[:1], 48), math.exp(sum(nll) / len(nll)), rel_tol=1e-4)


def test_head_only_at_masked_positions_on_bert_and_without_split(tiny_base, text_splits):
    """The packed, head-at-mask path gives the naive number on a BERT (``cls`` head) too, and a model
    without a known encoder/head split falls back to the full forward pass with the same result."""
    tok, _ = load_base(str(tiny_base))
    bert = tiny_models.bert(head="masked_lm", vocab_size=len(tok), max_position_embeddings=64)
    assert encoder_and_head(bert)[1] is bert.cls
    sents = read_text(text_splits / "hau" / "test.txt")[:4]  # different lengths: padded batches
    naive = pseudo_perplexity_naive(bert, tok, sents, 40)
    assert math.isclose(pseudo_perplexity(bert, tok, sents, 40, max_batch=7), naive, rel_tol=1e-4)

    class Wrapped(torch.nn.Module):  # no base_model / lm_head attributes
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, **kw):
            return self.inner(**kw)

    wrapped = Wrapped(bert)
    assert encoder_and_head(wrapped) is None
    assert math.isclose(pseudo_perplexity(wrapped, tok, sents, 40, max_batch=7), naive, rel_tol=1e-4)


def test_language_adapter_lowers_heldout_pseudo_perplexity(lang_adapter, tiny_base, text_splits, tmp_path):
    run = json.loads((lang_adapter / "run.json").read_text())
    assert run["pppl_adapter"] < run["pppl_base"], run
    assert run["trainable_parameters"] < 0.1 * run["total_parameters"]
    # evaluate reloads the saved adapter and scores it beside the base on the same held-out text
    res = invoke(["multilingual", "evaluate", lang_adapter, "--text", text_splits / "hau" / "test.txt",
                  "--max-sentences", 40, "--out", tmp_path / "ev"])
    assert res.exit_code == 0, res.output
    rows = (tmp_path / "ev" / "results.csv").read_text().splitlines()
    assert rows[0] == ("run,language,task,split,base,adapter,lang_adapter,data_source,train_split,seed,accuracy,"
                       "weighted_f1,metric,value")
    vals = {r.split(",")[5]: float(r.split(",")[-1]) for r in rows[1:]}
    assert math.isclose(vals[f"seq_bn [{run['config']['language']}]"], run["pppl_adapter"], rel_tol=1e-4)
    assert math.isclose(vals["none"], run["pppl_base"], rel_tol=1e-4)
    # the rows' language is the text's: the same adapter scored on Swahili text is a Swahili row, said as such
    res = invoke(["multilingual", "evaluate", lang_adapter, "--text", text_splits / "swa" / "test.txt",
                  "--text-lang", "swa", "--max-sentences", 10, "--out", tmp_path / "ev_swa"])
    assert res.exit_code == 0, res.output
    rows = [r.split(",") for r in (tmp_path / "ev_swa" / "results.csv").read_text().splitlines()[1:]]
    assert {r[1] for r in rows} == {"swa"}
    assert sorted(r[5] for r in rows) == sorted(["none", f"seq_bn [{run['config']['language']}]"])


def test_bert_architecture_and_errors(tmp_path, text_splits):
    res = invoke(["multilingual", "pretrain-tiny-base", text_splits / "swa" / "train.txt", "--out", tmp_path / "b",
                  "--arch", "bert", "--hidden-size", 16, "--layers", 1, "--steps", 2, "--vocab-size", 300])
    assert res.exit_code == 0, res.output
    tok, model = load_base(str(tmp_path / "b"))
    assert type(model).__name__ == "BertForMaskedLM" and tok.cls_token == "[CLS]"
    splits = ["--train", text_splits / "swa" / "train.txt", "--eval", text_splits / "swa" / "test.txt"]
    res = invoke(["multilingual", "train-language-adapter", "--base", tmp_path / "missing", *splits,
                  "--out", tmp_path / "x"])
    assert res.exit_code == 2 and "missing: cannot load a tokenizer" in res.output
    res = invoke(["multilingual", "train-language-adapter", "--base", tmp_path / "b", "--method", "nope", *splits,
                  "--out", tmp_path / "x"])
    assert res.exit_code == 2 and "nope" in res.output and not (tmp_path / "x").exists()
