"""``adaptome train``: a generic adapter run for a causal LM or a masked LM on text or JSONL files.

The run: read the files (``text.read_texts``: plain text, one example per non-empty line, or JSON
Lines with the text in ``data.text_field``), tokenize, pack into blocks (causal) or pad per
example (masked, 15% of tokens masked as BERT does), load the model by hub id / local path or build
a tiny one from config, apply the adapter by registry name (or a whole-model method: ``sltrain`` from
scratch, or ``full`` fine-tuning of every loaded weight: ``adapters.from_scratch``), build the ``optimizer:``
section's optimizer, train with
``train.loop.fit``, report perplexity on the eval files (``evaluation.lm_perplexity``), save the adapter
(and optionally a merged standalone checkpoint; a whole-model method saves the whole model to
``adapter/`` and its dense equivalent, for ``full`` the trained model itself, to ``merged/``).
Outputs go to ``train.output_dir``: ``config.yaml`` (resolved), ``metrics.jsonl``,
``checkpoints/``, ``adapter/``, ``merged/``, ``summary.json``.

Under ``torchrun`` every process joins the group and trains its share of each batch, and evaluates its share
of the eval batches (the summed losses and token counts are added up, so the perplexities are one process's);
only the main process writes outputs. A folder with checkpoints is resumed only when the run's identity matches
(``train.identity``: these sections, each data file's size and SHA-256, a sample of the base model's
weights, the training options but those in ``train.config.MAY_CHANGE_ON_RESUME``); checkpoints of another
identity are refused, or with ``--overwrite`` removed (with ``metrics.jsonl``) once every other check has
passed, and the run starts again; ``config.yaml`` is written once that check has passed, so a refused run
changes no file. ``summary.json`` reports the whole run (``first_loss``: step 1's loss, ``last_loss``: the
last step's, whatever ``train.log_every``; kept in checkpoints), also after a resume or a re-save with
``--overwrite``,
with the held-out perplexity of the base model (for ``full``: the loaded weights, measured before training and
before any resume) and of a unigram model beside the adapter's, and the share of
eval examples that are verbatim training examples (``eval_overlap_with_train``; a warning from 10 %: an eval
file that repeats the training text gives no held-out perplexity). Temporary files a
killed run left in the folder are removed. A data file that is not UTF-8 is refused naming its file
and line before anything is read or written; so is one whose tokens are more than 5 % ``<unk>``
(``MAX_UNK_SHARE``: the built-in character tokenizer reads printable ASCII only), and ``train.eval_every``
without eval files. An existing ``merged/`` is refused like ``adapter/``; with ``--overwrite`` a run that
writes no merged model removes the earlier run's. An option set to a value the run does not read (``ignored_options``:
``data.mlm_probability`` on a causal model, ``model.tiny`` beside ``model.name_or_path``, ``data.text_field`` without
a ``.jsonl`` file) is named in a warning and recorded at its default in the run's identity.

Not covered: instruction / chat formats and domain file formats such as FASTA (the domain packages
own those), streaming corpora, sequence classification heads.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from adaptome.core.config import InvalidValue
from adaptome.core.optim.registry import OptimizerSpec
from adaptome.core.train.config import TrainConfig

log = logging.getLogger(__name__)


@dataclass
class TinyModelConfig:
    """A model built from config when no ``name_or_path`` is given (random weights, seeded by ``train.seed``).

    Args:
        hidden_size: width of the residual stream.
        num_layers: transformer blocks.
        num_heads: attention heads (must divide ``hidden_size``).
        intermediate_size: width of the feed-forward layer.
    """

    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 128


@dataclass
class ModelConfig:
    """The base model.

    Args:
        name_or_path: hub id or local folder loaded with ``AutoModelFor{CausalLM,MaskedLM}`` and its
            tokenizer; empty builds a tiny model from ``tiny`` with the character tokenizer.
        kind: ``causal`` (next-token loss on packed blocks) or ``masked`` (BERT-style masked LM).
        tiny: the architecture built when ``name_or_path`` is empty.
    """

    name_or_path: str = ""
    kind: Literal["causal", "masked"] = "causal"
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)


@dataclass
class DataConfig:
    """The text to train and evaluate on (see ``text.read_texts`` for the formats).

    Args:
        train_files: plain-text files (one example per non-empty line) or ``.jsonl`` files.
        eval_files: the same formats; held-out perplexity is reported on them (none: no evaluation).
        block_size: tokens per packed block (causal) or the truncation length per example (masked).
        text_field: the JSON field holding the text in ``.jsonl`` files.
        mlm_probability: share of tokens masked for a masked LM (BERT: 0.15).
    """

    train_files: list[str] = field(default_factory=list)
    eval_files: list[str] = field(default_factory=list)
    block_size: int = 128
    text_field: str = "text"
    mlm_probability: float = 0.15

    def __post_init__(self) -> None:
        if self.block_size < 1:
            raise InvalidValue("block_size", f"must be >= 1 (tokens per example), got {self.block_size}")
        if not 0.0 < self.mlm_probability < 1.0:
            raise InvalidValue("mlm_probability", f"must be in (0, 1), got {self.mlm_probability}")


@dataclass
class AdapterSpec:
    """The adapter method.

    Args:
        method: a registered method name (``adaptome adapters list``).
        options: the method's config fields, e.g. ``{r: 8, target_modules: all-linear}``.
    """

    method: str = "lora"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunConfig:
    """One ``adaptome train`` run.

    Args:
        model: the base model.
        data: the training and evaluation text.
        adapter: the adapter method and its options.
        train: the training loop's options (``train.loop.TrainConfig``).
        save_merged: also write a standalone merged checkpoint to ``merged/`` (methods that merge).
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    adapter: AdapterSpec = field(default_factory=AdapterSpec)
    train: TrainConfig = field(default_factory=TrainConfig)
    optimizer: OptimizerSpec = field(default_factory=OptimizerSpec)
    save_merged: bool = True


def _load(model_cfg: ModelConfig):
    from adaptome.core import text
    from adaptome.core.config import ConfigError

    if model_cfg.name_or_path:
        from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer

        from adaptome.core.model_files import check_model_folder

        cls = AutoModelForCausalLM if model_cfg.kind == "causal" else AutoModelForMaskedLM
        check_model_folder(model_cfg.name_or_path)  # a truncated weights / tokenizer file: one line naming it
        _check_model_kind(model_cfg, cls)
        tok = AutoTokenizer.from_pretrained(model_cfg.name_or_path)
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        needs = ("eos_token", "packed causal blocks end each example with it") if model_cfg.kind == "causal" else \
            ("pad_token", "masked-LM batches are padded with it")
        if getattr(tok, needs[0]) is None:
            raise ConfigError(f"{model_cfg.name_or_path}: the tokenizer has no {needs[0]} ({needs[1]}); add one to "
                              f"its tokenizer_config.json or check model.kind ({model_cfg.kind!r})")
        return cls.from_pretrained(model_cfg.name_or_path), tok
    tok = text.char_tokenizer()
    t = model_cfg.tiny
    build = text.tiny_causal_lm if model_cfg.kind == "causal" else text.tiny_masked_lm
    model = build(len(tok), hidden_size=t.hidden_size, num_layers=t.num_layers, num_heads=t.num_heads,
                  intermediate_size=t.intermediate_size)
    return model, tok


def _check_model_kind(model_cfg: ModelConfig, auto_cls) -> None:
    """Refuse, in one line, a model whose architecture has no ``model.kind`` head (an encoder-decoder such as
    T5 has neither; a BERT named as causal): transformers' own error lists every architecture it knows."""
    from transformers import AutoConfig

    from adaptome.core.config import ConfigError

    name = model_cfg.name_or_path
    if name.startswith(("/", ".", "~")) and not Path(name).expanduser().exists():  # a path, not a hub id
        raise ConfigError(f"{name}: model.name_or_path: no such model folder")
    mcfg = AutoConfig.from_pretrained(name)
    if type(mcfg) not in auto_cls._model_mapping:
        other = "masked" if model_cfg.kind == "causal" else "causal"
        raise ConfigError(f"{model_cfg.name_or_path}: a {mcfg.model_type!r} model has no {model_cfg.kind} LM head "
                          f"({auto_cls.__name__} does not load it); set model.kind to {other!r} if it is a "
                          f"{other} LM (encoder-decoder models such as T5 are not covered by adaptome train)")


#: a file whose tokens are more than this share ``<unk>`` is refused: the tokenizer does not cover its text
MAX_UNK_SHARE = 0.05


def _check_unk(path: str, ids: list[list[int]], tok) -> None:
    """Refuse a file that the tokenizer mostly cannot read (the built-in character tokenizer maps every
    non-ASCII character to ``<unk>``: Georgian or Amharic text would train on spaces alone), naming the share."""
    from adaptome.core.text import InputError, unk_share

    share = unk_share(tok, ids)
    if share > MAX_UNK_SHARE:
        hint = ("the built-in character tokenizer covers printable ASCII only; set model.name_or_path to a model "
                "whose tokenizer covers this text") if len(tok) < 200 else "this tokenizer does not cover the text"
        raise InputError(f"{path}: {share:.0%} of its tokens are {tok.unk_token} ({hint})")


def build_datasets(files: list[str], tok, kind: str, block_size: int, text_field: str = "text",
                   warn: bool = True) -> list[dict]:
    """Tokenized examples: packed blocks for causal LMs, one truncated example each for masked LMs (with ``warn``,
    masked examples longer than ``block_size`` are counted in a warning naming the files and the share of tokens
    cut). A file whose tokens are more than ``MAX_UNK_SHARE`` unknown to the tokenizer is refused, naming it; so
    are files that hold fewer tokens than one causal block, naming them and ``data.block_size``."""
    import torch

    from adaptome.core import text

    texts, ids = [], []
    for f in files:
        per_file = text.read_texts(f, text_field)
        per_ids = [tok(t, add_special_tokens=False)["input_ids"] for t in per_file]
        _check_unk(f, per_ids, tok)
        texts += per_file
        ids += per_ids
    if kind == "causal":
        try:
            blocks = text.pack_blocks(ids, block_size, tok.eos_token_id)
        except text.InputError as e:  # name the files and the option: train or eval data, and what to change
            raise text.InputError(f"{', '.join(map(str, files))}: {e} (data.block_size); add text or lower "
                                  "data.block_size") from None
        return [{"input_ids": torch.tensor(b), "labels": torch.tensor(b)} for b in blocks]
    enc = [tok(t, truncation=True, max_length=block_size)["input_ids"] for t in texts]
    if warn:
        _warn_cut(files, [len(i) + len(tok("")["input_ids"]) for i in ids], block_size)
    return [{"input_ids": torch.tensor(e)} for e in enc]


def _warn_cut(files: list[str], lengths: list[int], block_size: int) -> None:
    """Say how many masked-LM examples (of ``lengths`` tokens, special tokens included) ``block_size`` cuts, and
    the share of their tokens that never trains or scores: the model sees only each example's first block."""
    cut = [n for n in lengths if n > block_size]
    if cut:
        lost = sum(n - block_size for n in cut) / sum(lengths)
        log.warning(f"{', '.join(map(str, files))}: {len(cut)} of {len(lengths)} examples are longer than "
                    f"data.block_size ({block_size} tokens) and were cut to it, {lost:.0%} of the tokens left out; "
                    "raise data.block_size (up to the model's positions) or split the examples")


#: an eval set whose examples are this share or more verbatim training examples is reported as not held out
MAX_EVAL_OVERLAP = 0.1


def eval_overlap(train_files: list[str], eval_files: list[str], text_field: str = "text") -> float:
    """The share of eval examples (lines, or JSONL texts) that are also training examples, verbatim: the
    summary's ``eval/perplexity`` is held out only when this is near 0 (an eval file that is a training
    file, or a copy of one, gives 1.0). A warning names the files at ``MAX_EVAL_OVERLAP`` or more."""
    from adaptome.core import text

    if not eval_files:
        return 0.0
    seen = {t for f in train_files for t in text.read_texts(f, text_field)}
    evals = [t for f in eval_files for t in text.read_texts(f, text_field)]
    share = sum(t in seen for t in evals) / len(evals)
    if share >= MAX_EVAL_OVERLAP:
        log.warning(f"{', '.join(map(str, eval_files))}: {share:.0%} of the eval examples are also in "
                    f"data.train_files, so eval/perplexity is not a held-out perplexity; give eval files "
                    "with other text")
    return share


def ignored_options(cfg: RunConfig) -> list[str]:
    """One line per option the run was given (a value other than the default) that it does not read: a warning
    names it, so that a config does not say one thing while the run does another. ``data.mlm_probability`` on a
    causal model (no token is masked), ``model.tiny`` beside ``model.name_or_path`` (the loaded model is used) and
    ``data.text_field`` without a ``.jsonl`` file (plain text has no fields). Warnings, not refusals: one config
    file may serve both kinds of model, or the tiny model until a real one is set with ``--set``.
    ``run_identity_of`` records them at their defaults, so changing one does not refuse a resume."""
    out, default = [], DataConfig()
    if cfg.model.kind == "causal" and cfg.data.mlm_probability != default.mlm_probability:
        out.append(f"data.mlm_probability {cfg.data.mlm_probability}: has no effect, model.kind is causal (every "
                   "next token is predicted, none is masked); it applies to masked LMs only")
    if cfg.model.name_or_path and cfg.model.tiny != TinyModelConfig():
        out.append(f"model.tiny: has no effect, model.name_or_path {cfg.model.name_or_path!r} is loaded (the tiny "
                   "model is built only when model.name_or_path is empty)")
    files = cfg.data.train_files + cfg.data.eval_files
    if cfg.data.text_field != default.text_field and not any(Path(f).suffix.lower() == ".jsonl" for f in files):
        out.append(f"data.text_field {cfg.data.text_field!r}: has no effect, no data file is .jsonl (plain-text "
                   "files are read one example per line, with no fields)")
    return out


def _collator(tok, kind: str, mlm_probability: float):
    import torch

    if kind == "causal":
        return lambda b: {k: torch.stack([x[k] for x in b]) for k in b[0]}  # (B, T)
    from transformers import DataCollatorForLanguageModeling

    return DataCollatorForLanguageModeling(tok, mlm=True, mlm_probability=mlm_probability)


def tokenizer_digest(tok) -> str:
    """A digest of what turns text into ids: the vocabulary (token -> id) and the special tokens, so a
    ``tokenizer.json`` edited or replaced beside the same weights is a change (its ids would mean other text)."""
    import hashlib
    import json

    vocab = sorted(tok.get_vocab().items())
    special = {k: str(v) for k, v in sorted(tok.special_tokens_map.items())}
    return hashlib.sha256(json.dumps([vocab, special]).encode()).hexdigest()[:16]


def run_identity_of(cfg: RunConfig, method_cfg: Any, base_digest: str | None = None,
                    tok_digest: str | None = None) -> dict[str, Any]:
    """What of ``cfg`` beyond the training options shapes the result (``train.identity``): the model,
    data and adapter sections, with each data file by size and SHA-256 instead of its path (so an
    edited file of the same size is seen, a moved one is not a change), the base model's
    ``identity.weights_digest`` (so a model folder replaced by another checkpoint is a change too) and
    ``tokenizer_digest`` (a tokenizer edited beside unchanged weights, too)."""
    from adaptome.core.config import to_dict
    from adaptome.core.train.identity import file_digest

    data, model = to_dict(cfg.data), to_dict(cfg.model)
    # options the run does not read (``ignored_options``) at their defaults: changing one does not refuse a resume
    if cfg.model.kind == "causal":
        data["mlm_probability"] = DataConfig.mlm_probability
    if cfg.model.name_or_path:
        model["tiny"] = to_dict(TinyModelConfig())
    if not any(Path(f).suffix.lower() == ".jsonl" for f in cfg.data.train_files + cfg.data.eval_files):
        data["text_field"] = DataConfig.text_field
    for key in ("train_files", "eval_files"):
        data[key] = [{k: v for k, v in file_digest(f).items() if k != "path"} for f in data[key]]
    # the method's resolved config (8 and 8.0 are one value)
    adapter = method_cfg.to_dict() if hasattr(method_cfg, "to_dict") else to_dict(method_cfg)
    return {"model": model, "base_weights": base_digest, "tokenizer": tok_digest, "data": data,
            "adapter": {"method": cfg.adapter.method, "options": adapter}, "optimizer": to_dict(cfg.optimizer),
            "save_merged": cfg.save_merged}


def _check_utf8(files: list[str]) -> None:
    """Refuse a data file that is not UTF-8 text, naming the file, line and column of the first bad byte
    (before any reader sees it, so the message is the same whatever the format)."""
    from adaptome.core.text import InputError

    for f in files:
        path = Path(f)
        if not path.is_file():
            continue  # the reader names a missing file
        data = path.read_bytes()
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as e:
            line = data.count(b"\n", 0, e.start) + 1
            column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
            raise InputError(f"{path}:{line}: not UTF-8 text (byte 0x{data[e.start]:02x} at column {column}); "
                             "convert the file to UTF-8") from None


def _check_block_size(model, block_size: int, source: str | None) -> None:
    """Refuse ``data.block_size`` beyond the positions the model has (learned position tables fail deep
    inside the forward pass with a shape error; rotary models would run on lengths they never saw)."""
    from adaptome.core.config import InvalidValue

    mcfg = getattr(model, "config", None)
    limit = getattr(mcfg, "max_position_embeddings", None) or getattr(mcfg, "n_positions", None)
    if not isinstance(limit, int):
        return
    if getattr(mcfg, "model_type", "") in ("roberta", "xlm-roberta", "camembert"):  # positions start after pad
        limit -= (getattr(mcfg, "pad_token_id", None) or 0) + 1
    if block_size > limit:
        raise InvalidValue("data.block_size", f"{block_size} tokens is more than the model's {limit} positions "
                           f"(max_position_embeddings); lower it to at most {limit}", source)


class _SeededPerplexity:
    """``lm_perplexity`` on the eval set, its batches shared by the processes (``evaluation.eval_batches``: batch i
    is process i mod W's) and the summed NLL and token counts added up over them, so W processes report what one
    process does and each forwards 1/W of the set. Batch i is collated with the torch RNG seeded by
    ``train.seed + i`` (restored after): a masked LM's collator draws the same masks at every evaluation and
    whatever the number of processes, so the numbers of one run, its baselines and a rerun score the same tokens.
    Every process must call it (the sums are all-reduced)."""

    def __init__(self, eval_set: list, collate, kind: str, seed: int, acc):
        self.eval_set, self.collate, self.kind, self.seed, self.acc = eval_set, collate, kind, seed, acc

    @property
    def shard(self) -> tuple[int, int]:
        return self.acc.process_index, self.acc.num_processes

    def reduced(self, total: float, count: int) -> float:
        """exp(sum of every process's ``total`` / sum of their ``count``)."""
        import torch

        from adaptome.core.evaluation import perplexity_from_losses

        if self.acc.num_processes > 1:
            sums = torch.tensor([total, float(count)], dtype=torch.float64, device=self.acc.device)  # (2,)
            torch.distributed.all_reduce(sums)
            total, count = float(sums[0]), int(round(float(sums[1])))
        return perplexity_from_losses(total, count)

    def __call__(self, model) -> float:
        from adaptome.core.evaluation import lm_nll_sum

        return self.reduced(*lm_nll_sum(model, self.eval_set, self.collate, self.kind, shard=self.shard,
                                        batch_seed=self.seed))


class _Baselines:
    """Hook: at the start of training (the model on its device, nothing trained yet in this call), the
    held-out perplexity of the base model (adapters disabled; none for a from-scratch method, which has no
    base; ``base`` when given: ``full`` measures its loaded weights before ``fit``, since a resumed run's weights
    are trained ones here) and of a unigram model of the training tokens (``evaluation.unigram_nll_sum``),
    on the tokens the run's own evaluation scores, shared by the processes as that one is. ``values`` goes into
    ``summary.json``."""

    def __init__(self, perplexity: _SeededPerplexity, train_set: list, vocab_size: int, from_scratch: bool,
                 base: float | None = None):
        self.perplexity, self.train_set, self.vocab_size, self.from_scratch = perplexity, train_set, vocab_size, \
            from_scratch
        self.values: dict[str, float] = {} if base is None else {"eval/perplexity_base": base}

    def on_train_start(self, state) -> None:
        import torch

        from adaptome.core.adapters.api import disable_adapters
        from adaptome.core.evaluation import unigram_nll_sum

        p = self.perplexity
        if not p.eval_set:
            return
        model, was_training = state.model, state.model.training
        model.eval()
        with torch.no_grad():
            if not self.from_scratch:
                with disable_adapters(model):
                    self.values["eval/perplexity_base"] = p(model)
            self.values["eval/perplexity_unigram"] = p.reduced(*unigram_nll_sum(
                self.train_set, p.eval_set, p.collate, self.vocab_size, p.kind, shard=p.shard, batch_seed=p.seed))
        model.train(was_training)


def run_generic(cfg: RunConfig, overwrite: bool = False, source: str | None = None) -> str:
    """Train, evaluate and save; returns a one-paragraph summary. ``source``: the config file, named by
    errors in the adapter options (checked before the model is loaded).

    Under ``torchrun`` every process trains its share of each batch; only the main process writes
    ``config.yaml``, ``adapter/``, ``merged/`` and ``summary.json`` while the others wait.
    """
    from adaptome.core.train.threads import torch_threads

    with torch_threads(cfg.train.threads):  # loading, training, evaluation and saving: the run's thread count
        return _run_generic(cfg, overwrite, source)


def _run_generic(cfg: RunConfig, overwrite: bool, source: str | None) -> str:
    import torch

    from adaptome.core.adapters.api import trainable_report
    from adaptome.core.adapters.from_scratch import apply_method, method_config
    from adaptome.core.atomic import clean_stale
    from adaptome.core.config import ConfigError, save_config
    from adaptome.core.optim.registry import make_optimizer_factory
    from adaptome.core.train.hooks import WriteOnStart
    from adaptome.core.train.identity import weights_digest
    from adaptome.core.train.loop import fit, make_accelerator

    if not cfg.data.train_files:
        raise ConfigError("data.train_files: is empty; give at least one text (.txt) or JSONL (.jsonl) file")
    # before any loading or training: the options, and every output folder the run will write at its end
    method_cfg, from_scratch = method_config(cfg.adapter.method, cfg.adapter.options, source, prefix="adapter.options")
    out = Path(cfg.train.output_dir)
    for name in ("adapter", "merged"):  # a merged/ this run would not write is an earlier run's: refused too
        if (out / name).exists() and not overwrite:
            raise FileExistsError(f"{out / name}: already exists; use --overwrite or another train.output_dir")
    if cfg.train.eval_every and not cfg.data.eval_files:
        raise ConfigError(f"train.eval_every {cfg.train.eval_every}: data.eval_files is empty, so there is nothing "
                          "to evaluate; give eval files or set train.eval_every=0")
    t = cfg.train
    make_optimizer = make_optimizer_factory(cfg.optimizer.name, cfg.optimizer.options, t.lr, t.weight_decay,
                                            t.betas)
    _check_utf8(cfg.data.train_files + cfg.data.eval_files)
    acc = make_accelerator(cfg.train.mixed_precision, cfg.train.cpu, cfg.train.dist_timeout_s)
    if acc.is_main_process:
        for line in ignored_options(cfg):
            log.warning(line)
        for p in clean_stale(out):  # temporary folders and files of a killed run (.adapter.tmp-*, ...)
            log.warning(f"removed {p}: left half-written by an interrupted run")
    torch.manual_seed(cfg.train.seed)  # a tiny model built from config starts from the same weights each run
    model, tok = _load(cfg.model)
    _check_block_size(model, cfg.data.block_size, source)
    base_digest = weights_digest(model)  # before the adapter: the base's own weights
    train_set = build_datasets(cfg.data.train_files, tok, cfg.model.kind, cfg.data.block_size, cfg.data.text_field,
                               warn=acc.is_main_process)
    eval_set = build_datasets(cfg.data.eval_files, tok, cfg.model.kind, cfg.data.block_size,
                              cfg.data.text_field, warn=acc.is_main_process) if cfg.data.eval_files else []
    overlap = eval_overlap(cfg.data.train_files, cfg.data.eval_files, cfg.data.text_field) \
        if acc.is_main_process else 0.0
    collate = _collator(tok, cfg.model.kind, cfg.data.mlm_probability)
    # an adapter, or a method that replaces the layers and trains the whole model (sltrain)
    model, adapter_cfg, from_scratch = apply_method(model, cfg.adapter.method, cfg.adapter.options, source,
                                                   prefix="adapter.options")
    report = trainable_report(model)
    perplexity = _SeededPerplexity(eval_set, collate, cfg.model.kind, cfg.train.seed, acc)
    eval_fn = (lambda m: {"perplexity": perplexity(m)}) if eval_set else None
    base_ppl = _loaded_perplexity(model, perplexity, acc) if getattr(adapter_cfg, "trains_loaded_weights", False) \
        else None
    baselines = _Baselines(perplexity, train_set, len(tok), from_scratch, base_ppl)
    res = fit(model, train_set, cfg.train, collate_fn=collate, eval_fn=eval_fn,
              hooks=[WriteOnStart(lambda: save_config(cfg, out)), baselines],
              accelerator=acc, identity=run_identity_of(cfg, adapter_cfg, base_digest, tokenizer_digest(tok)),
              make_optimizer=make_optimizer, start_again=overwrite)
    summary = None
    if acc.is_main_process:
        can_merge = _writes_merged(adapter_cfg, from_scratch)
        summary = _write_outputs(cfg, res, tok, report, acc.num_processes, can_merge, overwrite,
                                 {**baselines.values, **({"eval_overlap_with_train": round(overlap, 4)}
                                                         if eval_set else {})})
    acc.wait_for_everyone()
    acc.end_training()
    return json.dumps(summary, indent=2) if summary is not None else ""


def _loaded_perplexity(model, perplexity: _SeededPerplexity, acc) -> float | None:
    """Held-out perplexity of ``model`` as loaded, before ``fit`` trains it or a resume loads a checkpoint into it
    (``full``: the weights that train are the base's), on the run's device; every process takes its share."""
    import torch

    if not perplexity.eval_set:
        return None
    was_training = model.training
    model.to(acc.device).eval()
    with torch.no_grad():
        value = perplexity(model)
    model.train(was_training)
    return value


def recorded_base(name: str) -> str:
    """The base model as an adapter records it: a local folder by its absolute path (a relative one would name
    another folder, or a hub id, when the adapter is used from elsewhere), a hub id as given."""
    path = Path(name).expanduser()
    return str(path.resolve()) if path.exists() else name


def _writes_merged(method_cfg, from_scratch: bool) -> bool:
    """Whether the method can write ``merged/``: an adapter that merges into its base, or a whole-model method
    whose layers can be made dense (SLTrain's ``materialize``; ``full``'s are already)."""
    return hasattr(method_cfg, "materialize") if from_scratch else bool(method_cfg.supports_merge)


def _write_outputs(cfg: RunConfig, res, tok, report: dict, world_size: int, can_merge: bool,
                   overwrite: bool, baselines: dict[str, float]) -> dict[str, Any]:
    """``adapter/`` (+ tokenizer), ``merged/`` and ``summary.json``; the losses are the whole run's (``fit``
    carries step 1's through checkpoints, so a resumed or re-saved run reports its first loss, not the resume's),
    and the evaluations are read from ``metrics.jsonl``.
    A from-scratch method (sltrain) saves the whole model to ``adapter/``, and its dense equivalent to ``merged/``
    (``from_scratch.save_standalone``)."""
    from adaptome.core.adapters.from_scratch import save_standalone, save_trained
    from adaptome.core.atomic import write_text_atomic
    from adaptome.core.train.metrics import read_metrics

    out = Path(cfg.train.output_dir)
    # from scratch: model.safetensors + method.json; an adapter records its base for `adapters export`
    extra = {"base_model_name_or_path": recorded_base(cfg.model.name_or_path)} if cfg.model.name_or_path else None
    save_trained(res.model, out / "adapter", overwrite=overwrite, extra=extra)
    tok.save_pretrained(out / "adapter")
    if cfg.save_merged and can_merge:
        save_standalone(res.model, out / "merged", tokenizer=tok, overwrite=overwrite)
    elif (out / "merged").exists():  # an earlier run's (--overwrite): it is not this run's model
        shutil.rmtree(out / "merged")
        log.warning(f"removed {out / 'merged'}: an earlier run's merged model; this run writes none")
    records = read_metrics(out / "metrics.jsonl")
    losses = [r["loss"] for r in records if "loss" in r]
    summary = {
        "method": cfg.adapter.method,
        "optimizer": cfg.optimizer.name,
        "trainable": report["trainable"],
        "trainable_percent": round(report["percent"], 3),
        "steps": res.step,
        "world_size": world_size,
        "resumed_from": res.resumed_from,
        # step 1's and the last step's loss, whatever train.log_every; a checkpoint of an older version kept
        # none: then the first and last metrics lines' (means over log_every steps)
        "first_loss": res.first_loss if res.first_loss is not None else (losses[0] if losses else None),
        "last_loss": res.last_loss if res.last_loss is not None else (losses[-1] if losses else None),
        **{k: v for r in records for k, v in r.items() if k.startswith("eval/")},
        **baselines,
    }
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2))
    return summary
