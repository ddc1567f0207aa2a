"""The one place the test suite builds its tiny models from config (random weights, no download).

Use it as ``import tiny_models as tiny`` (``tests/conftest.py`` puts this folder on ``sys.path``; the
subprocess worker scripts do the same themselves), or through the fixtures of ``tests/conftest.py``.

Each architecture has a ``*_config(...)`` function (the sizes as keyword arguments; any other keyword
goes to the transformers config unchanged) and a builder ``tiny.<arch>(head=..., seed=0, eval_mode=True,
**config)`` that seeds the global torch RNG with ``seed`` (``None``: leave it as it is), builds the model
and puts it in eval mode (``eval_mode=False``: leave it in the train mode a fresh module has). The
weights therefore depend only on the arguments.

* ``llama``: ``LlamaForCausalLM``; grouped-query attention (2 key/value heads for 4 query heads) and an
  untied LM head by default; ``tied_llama_checkpoint`` saves one whose LM head is its input embedding, with
  the character tokenizer, as a folder.
* ``bert``: ``BertForMaskedLM`` (``head=None``: the bare ``BertModel``); dropout 0 by default so a
  model in train mode is deterministic too.
* ``xlmr``: ``XLMRobertaForMaskedLM``; ``esm``: ``EsmForMaskedLM`` (``head="folding"``:
  ``EsmForProteinFolding``, ``head="sequence_classification"``: ``EsmForSequenceClassification``;
  ``esm_checkpoint`` saves one with ESM-2's vocabulary and ``EsmTokenizer`` as a folder); ``phi3``:
  ``Phi3ForCausalLM`` (fused q/k/v and gate/up projections);
  ``vit``: ``ViTModel`` (``head="classification"``: ``ViTForImageClassification``).
* ``timm_vit``: timm's ``vit_tiny_patch16_224`` architecture shrunk (2 blocks, 32-pixel images, 3 classes),
  ``pretrained=False``.
* ``text_causal_lm`` / ``text_masked_lm``: the library's own tiny builders (``adaptome.core.text``),
  seeded the same way, for tests that must rebuild exactly what the CLI's ``model: tiny:`` builds.

Not covered: loading real checkpoints (tests never download).
"""

from __future__ import annotations


def _build(cls, config, seed: int | None, eval_mode: bool):
    import torch

    if seed is not None:
        torch.manual_seed(seed)
    model = cls(config)
    return model.eval() if eval_mode else model


def _pick(head, heads: dict, arch: str):
    if head not in heads:
        raise ValueError(f"tiny {arch}: head must be one of {sorted(heads, key=str)}, got {head!r}")
    import transformers

    return getattr(transformers, heads[head])


def llama_config(vocab_size: int = 32, hidden_size: int = 32, intermediate_size: int = 64, num_layers: int = 2,
                 num_heads: int = 4, num_kv_heads: int = 2, tie: bool = False, **extra):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=intermediate_size,
                       num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_kv_heads,
                       tie_word_embeddings=tie, **extra)


def llama(*, seed: int | None = 0, eval_mode: bool = True, **config):
    from transformers import LlamaForCausalLM

    return _build(LlamaForCausalLM, llama_config(**config), seed, eval_mode)


def tied_llama_checkpoint(folder, *, seed: int | None = 0, **config):
    """A 1-layer LLaMA whose LM head is its input embedding (``tie_word_embeddings``), sized for
    ``adaptome.core.text.char_tokenizer``, saved with that tokenizer to ``folder``; returns the folder."""
    from pathlib import Path

    from adaptome.core import text

    tok = text.char_tokenizer()
    sizes = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2,
                 num_kv_heads=2, tie=True, max_position_embeddings=64)
    model = llama(seed=seed, **{**sizes, **config})
    assert model.lm_head.weight is model.model.embed_tokens.weight
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return Path(folder)


def phi3_config(vocab_size: int = 32, hidden_size: int = 32, intermediate_size: int = 64, num_layers: int = 2,
                num_heads: int = 4, num_kv_heads: int = 4, **extra):
    from transformers import Phi3Config

    return Phi3Config(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=intermediate_size,
                      num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_kv_heads,
                      **extra)


def phi3(*, seed: int | None = 0, eval_mode: bool = True, **config):
    from transformers import Phi3ForCausalLM

    return _build(Phi3ForCausalLM, phi3_config(**config), seed, eval_mode)


def bert_config(vocab_size: int = 40, hidden_size: int = 32, intermediate_size: int = 64, num_layers: int = 2,
                num_heads: int = 4, dropout: float = 0.0, **extra):
    from transformers import BertConfig

    return BertConfig(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=intermediate_size,
                      num_hidden_layers=num_layers, num_attention_heads=num_heads, hidden_dropout_prob=dropout,
                      attention_probs_dropout_prob=dropout, **extra)


def bert(*, head: str | None = "masked_lm", seed: int | None = 0, eval_mode: bool = True, **config):
    cls = _pick(head, {"masked_lm": "BertForMaskedLM", None: "BertModel"}, "bert")
    return _build(cls, bert_config(**config), seed, eval_mode)


def xlmr_config(vocab_size: int = 40, hidden_size: int = 32, intermediate_size: int = 64, num_layers: int = 2,
                num_heads: int = 4, dropout: float = 0.0, **extra):
    from transformers import XLMRobertaConfig

    return XLMRobertaConfig(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=intermediate_size,
                            num_hidden_layers=num_layers, num_attention_heads=num_heads, hidden_dropout_prob=dropout,
                            attention_probs_dropout_prob=dropout, **extra)


def xlmr(*, seed: int | None = 0, eval_mode: bool = True, **config):
    from transformers import XLMRobertaForMaskedLM

    return _build(XLMRobertaForMaskedLM, xlmr_config(**config), seed, eval_mode)


def esm_config(vocab_size: int = 33, hidden_size: int = 32, intermediate_size: int = 64, num_layers: int = 2,
               num_heads: int = 4, dropout: float = 0.0, pad_token_id: int = 1, mask_token_id: int = 32, **extra):
    from transformers import EsmConfig

    return EsmConfig(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=intermediate_size,
                     num_hidden_layers=num_layers, num_attention_heads=num_heads, hidden_dropout_prob=dropout,
                     attention_probs_dropout_prob=dropout, pad_token_id=pad_token_id, mask_token_id=mask_token_id,
                     **extra)


def esm(*, head: str = "masked_lm", seed: int | None = 0, eval_mode: bool = True, **config):
    cls = _pick(head, {"masked_lm": "EsmForMaskedLM", "folding": "EsmForProteinFolding",
                       "sequence_classification": "EsmForSequenceClassification"}, "esm")
    return _build(cls, esm_config(**config), seed, eval_mode)


#: ESM-2's 33-token vocabulary in its order (``<cls>`` 0, ``<pad>`` 1, ``<eos>`` 2, ``<unk>`` 3, ``<mask>`` 32)
#: the tiny LLaMA that ``adaptome train`` builds from config in the core CLI tests (``--set model.<key>=...``)
TINY_TRAIN_MODEL = {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64}

ESM_VOCAB = ["<cls>", "<pad>", "<eos>", "<unk>", "L", "A", "G", "V", "S", "E", "R", "T", "I", "D", "P", "K", "Q",
             "N", "F", "Y", "M", "H", "W", "C", "X", "B", "U", "Z", "O", ".", "-", "<null_1>", "<mask>"]


def esm_tokenizer(folder):
    """transformers' ``EsmTokenizer`` over ``ESM_VOCAB`` (its ``vocab.txt`` written into ``folder``)."""
    from pathlib import Path

    from transformers import EsmTokenizer

    path = Path(folder) / "vocab.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(ESM_VOCAB) + "\n")
    return EsmTokenizer(str(path))


def esm_checkpoint(folder, *, head: str = "masked_lm", seed: int | None = 0, **config):
    """A tiny ESM (``esm``, vocabulary ``ESM_VOCAB``) saved with its tokenizer as a checkpoint folder;
    returns (model, tokenizer)."""
    model = esm(head=head, seed=seed, vocab_size=len(ESM_VOCAB), **config)
    tok = esm_tokenizer(folder)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return model, tok


def vit_config(image_size: int = 32, patch_size: int = 8, hidden_size: int = 32, intermediate_size: int = 64,
               num_layers: int = 2, num_heads: int = 4, **extra):
    from transformers import ViTConfig

    return ViTConfig(image_size=image_size, patch_size=patch_size, hidden_size=hidden_size,
                     intermediate_size=intermediate_size, num_hidden_layers=num_layers, num_attention_heads=num_heads,
                     **extra)


def vit(*, head: str | None = None, seed: int | None = 0, eval_mode: bool = True, **config):
    cls = _pick(head, {None: "ViTModel", "classification": "ViTForImageClassification"}, "vit")
    return _build(cls, vit_config(**config), seed, eval_mode)


def timm_vit(*, seed: int | None = 0, eval_mode: bool = True, img_size: int = 32, patch_size: int = 8,
             num_classes: int = 3, depth: int = 2, **extra):
    import timm
    import torch

    if seed is not None:
        torch.manual_seed(seed)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=img_size, patch_size=patch_size,
                              num_classes=num_classes, depth=depth, **extra)
    return model.eval() if eval_mode else model


def text_causal_lm(vocab_size: int, *, seed: int | None = 0, **sizes):
    """``adaptome.core.text.tiny_causal_lm(vocab_size, **sizes)`` after seeding (a model in train mode)."""
    import torch

    from adaptome.core import text

    if seed is not None:
        torch.manual_seed(seed)
    return text.tiny_causal_lm(vocab_size, **sizes)


def text_masked_lm(vocab_size: int, *, seed: int | None = 0, **sizes):
    """``adaptome.core.text.tiny_masked_lm(vocab_size, **sizes)`` after seeding (a model in train mode)."""
    import torch

    from adaptome.core import text

    if seed is not None:
        torch.manual_seed(seed)
    return text.tiny_masked_lm(vocab_size, **sizes)
