"""Helpers shared by the benchmark scripts: fresh-process timing and table printing."""

import json
import os
import statistics
import subprocess
import sys
import textwrap

HERE = os.path.dirname(os.path.abspath(__file__))


def run_timed(code: str, repeat: int = 3, env=None) -> list:
    """Runs `code` (which must print one JSON object with a "seconds" key) in `repeat` fresh
    processes, so allocator and import state never carry over between measurements."""
    out = []
    for _ in range(repeat):
        r = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(code)],
            capture_output=True,
            text=True,
            env={**os.environ, **(env or {})},
        )
        if r.returncode != 0:
            raise RuntimeError(f"benchmark child failed:\n{r.stderr[-3000:]}")
        out.append(json.loads(r.stdout.strip().splitlines()[-1]))
    return out


def median(rows: list, key: str = "seconds") -> float:
    return statistics.median(r[key] for r in rows)


def table(headers: list, rows: list) -> str:
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(headers)]

    def line(cells):
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(headers), sep] + [line(r) for r in rows])
