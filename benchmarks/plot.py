"""Draw the chat benchmark's stored bytes against thread length as an SVG (no plotting
library: a few lines and labels on log-log axes are all it takes).

Reads ``results/chat-memory.json`` and ``results/chat-file.json`` (written by ``chat.py``)
and writes ``results/chat.svg``, which the README shows.

Run: ``python benchmarks/plot.py`` (``make bench`` runs it after ``chat.py``).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
WIDTH, HEIGHT = 720, 420
LEFT, RIGHT, TOP, BOTTOM = 80, 230, 40, 50

#: (label, store, field, colour, dashed)
SERIES = [
    ("full state every step, zstd", "memory", "naive_bytes", "#d62728", False),
    ("savegame FileSystemSaver", "file", "stored_bytes", "#1f77b4", False),
    ("savegame MemorySaver", "memory", "stored_bytes", "#2ca02c", False),
    ("floor: final state, zstd", "memory", "floor_bytes", "#7f7f7f", True),
]


def _load(store: str) -> dict[str, Any]:
    return json.loads((RESULTS / f"chat-{store}.json").read_text())  # type: ignore[no-any-return]


def _label(value: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if value >= size:
            return f"{value / size:g} {unit}"
    return f"{value:g} B"


def svg(runs: dict[str, dict[str, Any]]) -> str:
    points = {label: [(r["turns"], r[field]) for r in runs[store]["results"]]
              for label, store, field, _, _ in SERIES}
    xs = [x for series in points.values() for x, _ in series]
    ys = [y for series in points.values() for _, y in series]
    x0, x1 = math.log10(min(xs)), math.log10(max(xs))
    y0, y1 = math.floor(math.log10(min(ys))), math.ceil(math.log10(max(ys)))

    def at(x: float, y: float) -> tuple[float, float]:
        px = LEFT + (math.log10(x) - x0) / (x1 - x0) * (WIDTH - LEFT - RIGHT)
        py = HEIGHT - BOTTOM - (math.log10(y) - y0) / (y1 - y0) * (HEIGHT - TOP - BOTTOM)
        return round(px, 1), round(py, 1)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
           f'font-family="sans-serif" font-size="12">',
           f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
           f'<text x="{LEFT}" y="22" font-size="14">Stored bytes of one chat thread '
           '(log-log; each turn adds two ~400-character messages)</text>']
    for exponent in range(y0, y1 + 1):
        _, py = at(min(xs), 10.0 ** exponent)
        out.append(f'<line x1="{LEFT}" y1="{py}" x2="{WIDTH - RIGHT}" y2="{py}" '
                   'stroke="#ddd"/>')
        out.append(f'<text x="{LEFT - 6}" y="{py + 4}" text-anchor="end">'
                   f'{_label(10.0 ** exponent)}</text>')
    for turns in sorted(set(xs)):
        px, _ = at(turns, 10.0 ** y0)
        out.append(f'<line x1="{px}" y1="{TOP}" x2="{px}" y2="{HEIGHT - BOTTOM}" '
                   'stroke="#eee"/>')
        out.append(f'<text x="{px}" y="{HEIGHT - BOTTOM + 16}" text-anchor="middle">'
                   f'{turns}</text>')
    out.append(f'<text x="{(LEFT + WIDTH - RIGHT) / 2}" y="{HEIGHT - 12}" '
               'text-anchor="middle">turns</text>')
    for label, _, _, colour, dashed in SERIES:
        series = points[label]
        path = " ".join(f"{px},{py}" for px, py in (at(x, y) for x, y in series))
        dash = ' stroke-dasharray="5,4"' if dashed else ""
        out.append(f'<polyline points="{path}" fill="none" stroke="{colour}" '
                   f'stroke-width="2"{dash}/>')
        for x, y in series:
            px, py = at(x, y)
            out.append(f'<circle cx="{px}" cy="{py}" r="3" fill="{colour}"/>')
    for row, (label, _, _, colour, dashed) in enumerate(SERIES):  # legend, top right
        lx, ly = WIDTH - RIGHT + 14, TOP + 10 + 20 * row
        dash = ' stroke-dasharray="5,4"' if dashed else ""
        out.append(f'<line x1="{lx}" y1="{ly}" x2="{lx + 22}" y2="{ly}" stroke="{colour}" '
                   f'stroke-width="2"{dash}/>')
        out.append(f'<text x="{lx + 28}" y="{ly + 4}">{label}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main() -> int:
    runs = {store: _load(store) for store in ("memory", "file")}
    target = RESULTS / "chat.svg"
    target.write_text(svg(runs))
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
