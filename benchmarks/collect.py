"""Assemble benchmarks/RESULTS.md from each benchmark folder's results*.md.

Each benchmark (``benchmarks/<question>/run.py``) runs its variants side by side in one process and
writes ``results.json`` (numbers) and ``results.md`` (a section with the table and the reproducing
command); GPU runs write ``results_cuda.*``. Usage: python benchmarks/collect.py
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).parent
HEADER = """# Benchmark results

Speed and memory are measured here, never asserted in tests. Each section was written by the
benchmark's own `run.py` (the command is in the section) and collected by
`python benchmarks/collect.py`. Ratios compare variants measured side by side in one run.
CPU numbers come from a 2-core machine shared with other work: compare the ratios, not the
absolute times. GPU sections, where present, come from one NVIDIA H200.
"""


def main() -> None:
    parts = [HEADER]
    for folder in sorted(p for p in HERE.iterdir() if p.is_dir() and (p / "run.py").exists()):
        sections = sorted(folder.glob("results*.md"))
        if not sections:
            continue
        parts.append(f"\n## {folder.name}\n")
        for s in sections:
            parts.append(s.read_text().strip() + "\n")
    (HERE / "RESULTS.md").write_text("\n".join(parts))
    print(f"wrote {HERE / 'RESULTS.md'}")


if __name__ == "__main__":
    main()
