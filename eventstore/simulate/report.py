"""The simulation report (pure): one self-contained HTML file with inline SVG charts, no network.

Charts share one time axis: throughput (committed events per second from the log head), intake lag
(messages on the intake topic not yet applied), outcomes by status (cumulative, from the agents'
ledgers) and the faults as marks, so a reader sees what each fault did to the flow.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

WIDTH, HEIGHT, PAD = 900, 180, 40
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#17becf")


@dataclass(frozen=True)
class Sample:
    at: float  # seconds since the run started
    head: int  # log head position (-1: unknown)
    lag: int | None  # intake messages not yet applied (None: unknown, e.g. database down)
    statuses: dict[str, int]  # cumulative outcomes seen by agents
    db_up: bool


class CheckLike(Protocol):
    @property
    def promise(self) -> str: ...
    @property
    def ok(self) -> bool: ...
    @property
    def detail(self) -> str: ...


class FaultLike(Protocol):
    @property
    def at(self) -> float: ...
    @property
    def kind(self) -> str: ...
    @property
    def detail(self) -> str: ...


def throughput(samples: Sequence[Sample]) -> list[tuple[float, float]]:
    """Committed events per second between consecutive samples (unknown heads carried over)."""
    out: list[tuple[float, float]] = []
    prev: Sample | None = None
    for s in samples:
        if prev is not None and s.head >= 0 and prev.head >= 0 and s.at > prev.at:
            out.append((s.at, (s.head - prev.head) / (s.at - prev.at)))
        if s.head >= 0:
            prev = s
    return out


def _chart(title: str, series: dict[str, list[tuple[float, float]]], t_max: float,
           faults: Sequence[FaultLike]) -> str:
    y_max = max([v for pts in series.values() for _, v in pts] + [1.0])

    def x(t: float) -> float:
        return PAD + (WIDTH - 2 * PAD) * (t / t_max if t_max else 0)

    def y(v: float) -> float:
        return HEIGHT - PAD + (-(HEIGHT - 2 * PAD) * v / y_max)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
             f'role="img" aria-label="{html.escape(title)}">',
             f'<text x="{PAD}" y="16" font-size="13">{html.escape(title)} (max {y_max:,.0f})</text>',
             f'<line x1="{PAD}" y1="{HEIGHT - PAD}" x2="{WIDTH - PAD}" y2="{HEIGHT - PAD}" stroke="#888"/>']
    for tick in range(0, int(t_max) + 1, max(1, int(t_max // 10) or 1)):
        parts.append(f'<text x="{x(tick):.1f}" y="{HEIGHT - PAD + 14}" font-size="10" '
                     f'text-anchor="middle">{tick}s</text>')
    for f in faults:
        parts.append(f'<line x1="{x(f.at):.1f}" y1="{PAD - 10}" x2="{x(f.at):.1f}" y2="{HEIGHT - PAD}" '
                     f'stroke="#999" stroke-dasharray="3,3"><title>{html.escape(f.kind)}: '
                     f'{html.escape(f.detail)}</title></line>')
    for i, (name, pts) in enumerate(series.items()):
        color = COLORS[i % len(COLORS)]
        if pts:
            path = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in pts)
            parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{path}"/>')
        parts.append(f'<text x="{WIDTH - PAD - 150}" y="{PAD + 12 * i}" font-size="11" fill="{color}">'
                     f'{html.escape(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def render(conditions: str, results: Sequence[CheckLike], samples: Sequence[Sample],
           faults: Sequence[FaultLike]) -> str:
    """The report as one HTML string."""
    t_max = max([s.at for s in samples] + [f.at for f in faults] + [1.0])
    statuses = sorted({k for s in samples for k in s.statuses})
    outcome_series = {k: [(s.at, float(s.statuses.get(k, 0))) for s in samples] for k in statuses}
    lag = [(s.at, float(s.lag)) for s in samples if s.lag is not None]
    down = [(s.at, 1.0) for s in samples if not s.db_up]
    rows = "".join(
        f'<tr><td style="color:{"green" if c.ok else "red"}">{"PASS" if c.ok else "FAIL"}</td>'
        f"<td>{html.escape(c.promise)}</td><td>{html.escape(c.detail)}</td></tr>" for c in results)
    fault_rows = "".join(f"<tr><td>{f.at:.1f}s</td><td>{html.escape(f.kind)}</td><td>{html.escape(f.detail)}</td>"
                         "</tr>" for f in faults)
    verdict = "all promises kept" if all(c.ok for c in results) else "PROMISES BROKEN"
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>eventstore simulate</title>"
        "<style>body{font-family:sans-serif;margin:2em}td{padding:2px 8px;vertical-align:top}"
        "table{border-collapse:collapse}tr:nth-child(even){background:#f4f4f4}</style></head><body>"
        f"<h1>eventstore simulate: {verdict}</h1><p>{html.escape(conditions)}</p>"
        f"<h2>Promises</h2><table>{rows}</table><h2>Charts</h2>"
        + _chart("committed events per second", {"throughput": throughput(samples)}, t_max, faults)
        + _chart("intake lag (messages not yet applied)", {"lag": lag}, t_max, faults)
        + _chart("outcomes seen by agents (cumulative)", outcome_series, t_max, faults)
        + _chart("database unreachable", {"down": down}, t_max, faults)
        + f"<h2>Faults</h2><table>{fault_rows}</table></body></html>"
    )


def write_report(path: Path, conditions: str, results: Sequence[CheckLike], samples: Sequence[Sample],
                 faults: Sequence[FaultLike]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(conditions, results, samples, faults), encoding="utf-8")
