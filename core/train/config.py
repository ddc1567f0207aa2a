"""The training options: one dataclass that ``fit`` takes, YAML configs nest and ``--help`` shows.

``TrainConfig`` is the only definition of the options ``loop.fit`` understands: ``fit(model, data,
cfg)`` or ``fit(model, data, max_steps=..., lr=...)`` (keyword options are validated into a
``TrainConfig``, so an unknown name or an impossible value fails before anything runs). Values that
cannot work are refused naming the key (``lr: inf``, ``warmup_steps`` beyond ``max_steps``, a
negative ``save_every``).

``MAY_CHANGE_ON_RESUME`` lists, in one place, the options a resumed run may change: everything
else that shapes the result is part of the run's identity (``identity.py``) and a change is refused.

Not covered: per-parameter-group learning rates (a method's optimizer builder owns those), early
stopping.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

from adaptome.core.config import InvalidValue

SCHEDULES = ("constant", "linear", "cosine")  # warmup then ...: see schedule.py

#: dotted keys of a run's identity that may differ between a run and its resume: they decide how
#: long the run goes and what it records, not the update of any step already taken. ``max_steps``
#: extends (or shortens) a run; with a decaying schedule the steps after the resume follow the new
#: length. ``save_merged`` is the generic run's (``adaptome train``) choice of outputs.
MAY_CHANGE_ON_RESUME = (
    "train.output_dir", "train.max_steps", "train.eval_every", "train.save_every", "train.keep_last",
    "train.log_every", "train.progress", "train.resume", "train.dist_timeout_s", "train.threads", "save_merged",
)


@dataclass
class TrainConfig:
    """Options of one training run (``loop.fit``).

    Args:
        output_dir: folder of the run: ``metrics.jsonl``, ``checkpoints/``, and what the caller adds.
        max_steps: optimizer steps to take in total (a resumed run counts the steps already taken).
        batch_size: examples per micro-batch per process.
        grad_accum: micro-batches per optimizer step; one step sees batch_size * grad_accum * processes.
        lr: peak learning rate (after warmup), finite and > 0.
        weight_decay: AdamW decoupled weight decay (>= 0).
        betas: AdamW (beta1, beta2), each in [0, 1).
        warmup_steps: steps of linear warmup, at most max_steps.
        schedule: after warmup: constant, linear decay to 0, or cosine decay to 0.
        max_grad_norm: clip the global gradient norm to this (null or 0: no clipping; never negative).
        eval_every: run the evaluation every N steps (0: only at the end).
        save_every: write a checkpoint every N steps, and one at the end (0: no checkpoints at all).
        keep_last: keep only the newest N checkpoints (0: keep all).
        log_every: write a metrics line every N steps (0: none).
        seed: seeds Python, NumPy and torch, the data order and dropout.
        mixed_precision: no, bf16 or fp16 autocast (where the device supports it).
        cpu: train on the CPU even when a GPU is visible (multi-process runs then use gloo).
        progress: show a progress bar (main process only).
        resume: continue from the newest intact checkpoint in output_dir (false: a folder with one is refused).
        dist_timeout_s: seconds a collective may wait for a peer process before the run fails naming it.
        threads: CPU threads torch uses in each process during the run (0: torch's default, one per core).
            Tiny models on a shared machine often train many times faster with 1 (``threads.py``). It
            may change on resume: it changes the speed, and at most the last bits of float sums.
    """

    output_dir: str = "runs/train"
    max_steps: int = 100
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 0
    schedule: Literal["constant", "linear", "cosine"] = "linear"
    max_grad_norm: float | None = 1.0
    eval_every: int = 0
    save_every: int = 100
    keep_last: int = 2
    log_every: int = 10
    seed: int = 0
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    cpu: bool = False
    progress: bool = True
    resume: bool = True
    dist_timeout_s: float = 600.0
    threads: int = 0

    def __post_init__(self) -> None:
        self.output_dir = str(self.output_dir)
        self.betas = tuple(self.betas)
        for name in ("max_steps", "batch_size", "grad_accum"):
            if getattr(self, name) < 1:
                raise InvalidValue(name, f"must be >= 1, got {getattr(self, name)}")
        for name in ("eval_every", "save_every", "keep_last", "log_every", "warmup_steps", "threads"):
            if getattr(self, name) < 0:
                raise InvalidValue(name, f"must be >= 0, got {getattr(self, name)}")
        _finite(self, "lr", low=0.0, strict=True)
        _finite(self, "weight_decay", low=0.0)
        _finite(self, "dist_timeout_s", low=0.0, strict=True)
        if self.max_grad_norm is not None:
            _finite(self, "max_grad_norm", low=0.0)
        if len(self.betas) != 2 or not all(_is_number(b) and 0.0 <= b < 1.0 for b in self.betas):
            raise InvalidValue("betas", f"must be two numbers in [0, 1), got {list(self.betas)}")
        if self.warmup_steps > self.max_steps:
            raise InvalidValue("warmup_steps", f"{self.warmup_steps} is more than max_steps ({self.max_steps})")
        if self.schedule not in SCHEDULES:
            raise InvalidValue("schedule", f"{self.schedule!r} is not one of {', '.join(SCHEDULES)}")
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise InvalidValue("mixed_precision", f"{self.mixed_precision!r} is not one of no, bf16, fp16")

    @classmethod
    def from_options(cls, base: "TrainConfig | None" = None, **options: Any) -> "TrainConfig":
        """``base`` (or the defaults) with ``options`` replaced; an unknown option is a TypeError naming it."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise TypeError(f"unknown training option(s) {unknown}; known: {', '.join(sorted(known))}")
        return dataclasses.replace(base, **options) if base is not None else cls(**options)


def options_help() -> str:
    """One line per option, ``train.<name>: <what it does> (default ...)``, from the docstring above
    (what ``adaptome train --help`` lists)."""
    lines, docs = [], _arg_docs(TrainConfig.__doc__ or "")
    for f in dataclasses.fields(TrainConfig):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        lines.append(f"train.{f.name}: {docs.get(f.name, '')} (default {default!r})")
    return "\n".join(lines)


def _arg_docs(doc: str) -> dict[str, str]:
    out: dict[str, str] = {}
    in_args, last = False, None
    for line in doc.splitlines():
        text = line.strip()
        if text == "Args:":
            in_args = True
        elif in_args and ":" in text and line.startswith(" " * 8) and not line.startswith(" " * 12):
            last, _, rest = text.partition(":")
            out[last] = rest.strip()
        elif in_args and last and text:
            out[last] += " " + text
    return out


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _finite(cfg: TrainConfig, name: str, low: float, strict: bool = False) -> None:
    v = getattr(cfg, name)
    ok = _is_number(v) and math.isfinite(v) and (v > low if strict else v >= low)
    if not ok:
        raise InvalidValue(name, f"must be a finite number {'>' if strict else '>='} {low:g}, got {v!r}")
