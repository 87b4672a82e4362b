"""Server-rendered SVG charts (no script, nothing loaded from elsewhere)."""

from __future__ import annotations

from html import escape

from modelcrate.display import when
from modelcrate.registry.records import Evaluation

WIDTH, HEIGHT, PAD = 560, 150, 36


def metric_charts(evaluations: list[Evaluation]) -> dict[str, str]:
    """One line chart per metric: each evaluation in time order (x), its value (y), a point
    per evaluation labelled with its version and time; versions change colour class."""
    names = sorted({k for e in evaluations for k in e.metrics})
    return {name: _chart(name, [e for e in evaluations if name in e.metrics]) for name in names}


def _chart(name: str, points: list[Evaluation]) -> str:
    values = [p.metrics[name] for p in points]
    low, high = min(values), max(values)
    span = (high - low) or max(abs(high), 1.0)
    step = (WIDTH - 2 * PAD) / max(1, len(points) - 1)

    def xy(i: int, value: float) -> tuple[float, float]:
        y = HEIGHT - PAD - (value - low) / span * (HEIGHT - 2 * PAD)
        return PAD + i * step, y

    coords = [xy(i, v) for i, v in enumerate(values)]
    parts = [
        f'<svg class="chart" role="img" aria-label="{escape(name)} over time" '
        f'width="{WIDTH}" height="{HEIGHT}" xmlns="http://www.w3.org/2000/svg">',
        f'<text x="4" y="{PAD - 8}">{escape(name)}: {high:.4g}</text>',
        f'<text x="4" y="{HEIGHT - 6}">{low:.4g}</text>',
        '<polyline fill="none" points="' + " ".join(f"{x:.1f},{y:.1f}" for x, y in coords) + '"/>',
    ]
    versions: list[str] = []
    for (x, y), point, value in zip(coords, points, values, strict=True):
        if point.version not in versions:
            versions.append(point.version)
        shade = versions.index(point.version) % 6
        label = f"{point.version} · {when(point.at)} · {value:.4g}"
        parts.append(
            f'<circle class="v{shade}" cx="{x:.1f}" cy="{y:.1f}" r="4">'
            f"<title>{escape(label)}</title></circle>"
        )
    first, last = points[0], points[-1]
    parts.append(f'<text x="{PAD}" y="{HEIGHT - 6}" dx="40">{escape(first.version)}</text>')
    if len(points) > 1:
        parts.append(
            f'<text x="{WIDTH - PAD}" y="{HEIGHT - 6}" text-anchor="end">'
            f"{escape(last.version)}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)
