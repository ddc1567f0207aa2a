"""``codegen generate``: n completions per problem from a backend, with batching, seeding and resume.

Output folder: ``generate_config.json`` (every setting that shapes the completions) and
``completions.jsonl``, one line per finished batch: ``{"name", "batch_start", "seed", "prompt_digest",
"completions": [...]}`` (``prompt_digest``: the problem's language and prompt, which ``execute`` compares
with the problems it is given: completions of R prompts run as Racket programs, MultiPL-E's R and Racket
problems sharing their names, or of an edited prompt, are refused; ``prompt_mismatches``). The n samples
of a problem are drawn in batches of ``batch_size``; batch b of problem p uses the seed
``derive_seed(seed, p, b)``, so each batch is reproducible on its own and an interrupted run, resumed,
ends with exactly the completions of an uninterrupted one.
Resuming is allowed only when ``generate_config.json`` matches the new settings (model, backend
URL, prompt builder, n, temperature, top_p, max_tokens, seed, problems file digest, and a sample of a local
model's weights: a model retrained into the same folder is a change); otherwise
the run refuses and names the differing settings (or pass ``overwrite``). A ``completions.jsonl`` without
``generate_config.json`` (another command's output, e.g. PLANSEARCH's) is never resumed. A half-written last line
(a killed run) is dropped; a damaged ``generate_config.json`` is an error naming it.

Not covered: the weights behind a server's model name (``--url``), sharding one run over several processes
(run one per problem subset instead).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from adaptome.core.errors import AdaptomeError
from adaptome.domains.codegen.backends import Backend
from adaptome.domains.codegen.problems import Problem, ProblemError
from adaptome.domains.codegen.prompts import build_prompt


class ResumeMismatch(AdaptomeError, ValueError):
    """An output folder holds a run made with other settings."""


class GenerateError(AdaptomeError, ValueError):
    """Generation settings out of range."""


@dataclass
class GenerateConfig:
    """Settings of a generation run.

    Args:
        model: model spec of the local backend, or the model name sent to the HTTP server.
        url: base URL of an OpenAI-compatible server (empty: the local backend).
        prompt_builder: registered prompt builder (zero-shot, few-shot, translation, reference).
        n: completions per problem.
        batch_size: completions drawn per backend call.
        temperature: sampling temperature; 0 is greedy.
        top_p: nucleus sampling mass.
        max_tokens: new tokens per completion.
        seed: base seed; each batch derives its own from it.
        problems_digest: sha256 of the problems (filled in by ``run_generate``).
        model_weights: a sample of the local model's weights (``core.train.identity.weights_digest``; filled in
            by ``run_generate``, empty for a server): another model saved at the same folder is a change.
    """

    model: str = "tiny"
    url: str = ""
    prompt_builder: str = "zero-shot"
    n: int = 1
    batch_size: int = 8
    temperature: float = 0.2
    top_p: float = 0.95
    max_tokens: int = 256
    seed: int = 0
    problems_digest: str = ""
    model_weights: str = ""

    def __post_init__(self) -> None:
        if self.n < 1 or self.batch_size < 1 or self.max_tokens < 1 or self.temperature < 0 or not 0 < self.top_p <= 1:
            raise GenerateError(f"need n, batch size and max tokens >= 1, temperature >= 0 and 0 < top_p <= 1 (got "
                                f"n {self.n}, batch size {self.batch_size}, max tokens {self.max_tokens}, "
                                f"temperature {self.temperature}, top_p {self.top_p})")


def derive_seed(seed: int, name: str, batch_start: int) -> int:
    h = hashlib.sha256(f"{seed}/{name}/{batch_start}".encode()).digest()
    return int.from_bytes(h[:4], "little") & 0x7FFFFFFF


def problems_digest(problems: list[Problem]) -> str:
    h = hashlib.sha256()
    for p in problems:
        h.update(json.dumps(p.to_json(), sort_keys=True).encode())
    return h.hexdigest()[:16]


def prompt_digest(problem: Problem) -> str:
    """What the completions continue: the problem's language and prompt (not its tests)."""
    return hashlib.sha256(f"{problem.language}\0{problem.prompt}".encode()).hexdigest()[:16]


def backend_weights(backend: Backend) -> str:
    """``weights_digest`` of a local backend's model (a sample of its values); empty for a server, whose
    weights cannot be seen from here."""
    import torch

    model = getattr(backend, "model", None)
    if not isinstance(model, torch.nn.Module):
        return ""
    from adaptome.core.train.identity import weights_digest

    return weights_digest(model)[:16]


def read_config(path: str | os.PathLike) -> dict:
    """The settings in a ``generate_config.json``; a damaged one (cut by a full disk, edited by hand) is an
    error naming it."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ResumeMismatch(f"{path}: damaged, not JSON ({e}); pass --overwrite to start again or choose "
                             "another --out") from None
    if not isinstance(doc, dict):
        raise ResumeMismatch(f"{path}: damaged, not a JSON object of generate settings; pass --overwrite to start "
                             "again or choose another --out")
    return doc


def _done_batches(path: Path) -> dict[tuple[str, int], list[str]]:
    done: dict[tuple[str, int], list[str]] = {}
    if not path.exists():
        return done
    raw = path.read_bytes()
    good_end = raw.rfind(b"\n") + 1
    if good_end < len(raw):  # a killed run left half a line: drop it
        with path.open("r+b") as f:
            f.truncate(good_end)
    for lineno, line in enumerate(raw[:good_end].decode("utf-8", "replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ProblemError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
        if not (isinstance(row, dict) and isinstance(row.get("name"), str) and isinstance(row.get("batch_start"), int)
                and isinstance(row.get("completions"), list)
                and all(isinstance(c, str) for c in row["completions"])):
            raise ProblemError(f"{path}:{lineno}: not a generate batch {{name, batch_start, completions: [str]}}")
        done[(row["name"], row["batch_start"])] = row["completions"]
    return done


def run_generate(problems: list[Problem], backend: Backend, cfg: GenerateConfig, out_dir: str | os.PathLike,
                 overwrite: bool = False, progress: bool = True) -> dict:
    """Generate (or finish generating) ``cfg.n`` completions per problem into ``out_dir``."""
    from adaptome.core.atomic import write_text_atomic
    from adaptome.core.progress import progress_bar

    cfg.problems_digest = problems_digest(problems)
    cfg.model_weights = backend_weights(backend)
    out = Path(out_dir)
    cfg_path, comp_path = out / "generate_config.json", out / "completions.jsonl"
    if cfg_path.exists() and not overwrite:
        old = read_config(cfg_path)
        # weights unknown on either side (a folder written before they were recorded, a server, a backend that does
        # not show its model): the model is compared by name and URL only
        diff = sorted(k for k, v in asdict(cfg).items() if old.get(k) != v
                      and not (k == "model_weights" and not (old.get(k) and v)))
        if "model_weights" in diff:
            diff[diff.index("model_weights")] = f"model_weights: the weights of {cfg.model} changed since"
        if diff:
            raise ResumeMismatch(f"{cfg_path}: made with other settings ({', '.join(diff)}); "
                                 "pass --overwrite to start again or choose another --out")
    elif comp_path.exists() and not overwrite:
        # generate writes its config before any completion: these are another command's (e.g. plansearch's)
        raise ResumeMismatch(f"{comp_path}: completions without a generate_config.json (not a generate run); "
                             "pass --overwrite to start again or choose another --out")
    elif overwrite:
        comp_path.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(cfg_path, json.dumps(asdict(cfg), indent=1))
    done = _done_batches(comp_path)
    todo = [(p, b) for p in problems for b in range(0, cfg.n, cfg.batch_size) if (p.name, b) not in done]
    with progress_bar("generating", total=len(todo), enabled=progress) as bar, comp_path.open("a") as f:
        for p, b in todo:
            size = min(cfg.batch_size, cfg.n - b)
            seed = derive_seed(cfg.seed, p.name, b)
            texts = backend.complete(build_prompt(cfg.prompt_builder, p), size, seed, cfg.temperature, cfg.top_p,
                                     cfg.max_tokens, list(p.stop_tokens))
            f.write(json.dumps({"name": p.name, "batch_start": b, "seed": seed, "prompt_digest": prompt_digest(p),
                                "completions": texts}) + "\n")
            f.flush()
            bar.advance(1)
    return {"problems": len(problems), "batches_run": len(todo), "batches_reused": len(done),
            "completions": str(comp_path)}


def read_completions(out_dir: str | os.PathLike) -> dict[str, list[str]]:
    """``{name: completions in sample order}`` from a generation folder or a completions JSONL."""
    from adaptome.domains.codegen.problems import load_completions

    path = Path(out_dir)
    if not path.is_dir():
        return load_completions(path)
    path = path / "completions.jsonl"
    if not path.is_file():
        raise ProblemError(f"{path}: no completions file (run `adaptome codegen generate` first)")
    rows = _done_batches(path)
    out: dict[str, list[str]] = {}
    for (name, _), comps in sorted(rows.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        out.setdefault(name, []).extend(comps)
    return out


def prompt_mismatches(out_dir: str | os.PathLike, problems: list[Problem]) -> list[str]:
    """Names of ``problems`` whose completions in a generation folder continue another language or prompt
    (rows without a ``prompt_digest``, from older runs or other commands, are not checked)."""
    path = Path(out_dir) / "completions.jsonl"
    if not path.is_file():
        return []
    by_name = {p.name: prompt_digest(p) for p in problems}
    bad = set()
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # _done_batches (read before) names a damaged line
        if isinstance(row, dict) and row.get("prompt_digest") and row.get("name") in by_name \
                and row["prompt_digest"] != by_name[row["name"]]:
            bad.add(row["name"])
    return sorted(bad)


def shortfall(out_dir: str | os.PathLike, completions: dict[str, list[str]]) -> dict[str, list[int]]:
    """``{name: [completions found, n asked]}`` for the problems of an unfinished ``generate`` folder
    (empty for a complete one, a completions JSONL, or a folder another command wrote)."""
    cfg_path = Path(out_dir) / "generate_config.json"
    if not cfg_path.is_file():
        return {}
    n = read_config(cfg_path).get("n")
    if not isinstance(n, int):
        return {}
    return {name: [len(c), n] for name, c in sorted(completions.items()) if len(c) < n}
