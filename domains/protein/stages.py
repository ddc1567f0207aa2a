"""Run a protein stage from its config: the one place where a stage's config becomes arguments.

``run_stage_config(cfg)`` builds or loads the model named by ``cfg.model`` (``config.model_kwargs``)
and runs ``pretrain.pretrain`` (a ``PretrainConfig``) or ``instruct.instruct`` (an
``InstructConfig``) with ``config.stage_kwargs(cfg)``. ``adaptome protein pretrain|instruct`` and
the quickstart both call it, so a config field cannot be wired in one and forgotten in the other.

Not covered: writing the resolved config (the command does that beside the outputs).
"""

from __future__ import annotations

from typing import Any

from adaptome.domains.protein.config import InstructConfig, PretrainConfig, model_kwargs, stage_kwargs


def run_stage_config(cfg: PretrainConfig | InstructConfig, overwrite: bool = False) -> dict[str, Any]:
    """Stage 1 or 2 as ``cfg`` says; returns the stage summary (``pretrain.run_stage``)."""
    from adaptome.domains.protein.model import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(**model_kwargs(cfg))
    if isinstance(cfg, PretrainConfig):
        from adaptome.domains.protein.pretrain import pretrain

        return pretrain(model=model, tok=tok, overwrite=overwrite, **stage_kwargs(cfg))
    from adaptome.domains.protein.instruct import instruct

    return instruct(model=model, tok=tok, overwrite=overwrite, **stage_kwargs(cfg))
