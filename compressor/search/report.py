"""The search pass's lines in report.md: a summary row and a section (chosen architecture, cost of
the search, the Pareto front plot, the notes)."""
from __future__ import annotations

from pathlib import Path
from typing import Any


def search_rows(m: dict[str, Any]) -> list[tuple[str, str]]:
    if not m:
        return []
    chosen, teacher = m["chosen"], m["teacher"]
    return [(f"student search ({m['method']}, {m['family']})",
             f"MACs {teacher['macs'] / 1e6:.2f}M -> {chosen['macs'] / 1e6:.2f}M ({m['fractions']['macs']:.1%}), params "
             f"{teacher['params'] / 1e6:.3f}M -> {chosen['params'] / 1e6:.3f}M; {m['candidates_scored']} candidates "
             f"scored in {m['seconds']:.1f} s, no training")]


def search_section(m: dict[str, Any], record: dict[str, Any]) -> list[str]:
    if not m:
        return []
    folder = Path(record["output"]).parent.as_posix() if record.get("output") else ""
    chosen = m["chosen"]
    lines = ["", f"## Student architecture search ({m['method']})", "",
             f"Score: {m['score_name']}. Constraints: "
             + (", ".join(f"{k} <= {v:,.6g}" for k, v in m["constraints"].items() if k != "latency_source") or "none")
             + (f" (latency from: {m['constraints']['latency_source']})" if m["constraints"].get("latency_source", "none") != "none" else ""),
             "", "| | teacher | chosen student |", "|---|---|---|"]
    for key, label in (("macs", "MACs"), ("params", "parameters"), ("peak_activation_bytes", "peak activation bytes"),
                       ("latency_ms", "latency ms")):
        t, c = m["teacher"].get(key), chosen.get(key)
        if t is not None or c is not None:
            lines.append(f"| {label} | {_fmt(t)} | {_fmt(c)} |")
    lines += ["", f"Search cost: {m['candidates_scored']} candidates scored in {m['seconds']:.1f} s "
                  f"({m['details'].get('rejected_by_constraints', 0)} more built but outside the constraints). "
                  f"Architecture: `{folder}/{m['spec_file']}`; Pareto front ({m['front_size']} candidates): "
                  f"`{folder}/{m['pareto_file']}`."]
    if folder:
        lines += ["", f"![score against {m['pareto_cost']}]({folder}/{m['chart']})"]
    table = m.get("latency_table")
    if table:
        err = table.get("holdout_error")
        lines += ["", f"Latency table: {table['entries']} layer shapes timed on {table['runtime']} "
                      f"({'reused from cache' if table.get('cached') else 'measured now'}); prediction error against "
                      f"measured end-to-end latency on {len(table.get('holdout', []))} held-out candidates: "
                      + (f"mean {err['mean']:.1%}, max {err['max']:.1%}" if err else "not measured")]
    lines += [f"\n> {note}" for note in m.get("notes", [])]
    return lines


def _fmt(value) -> str:
    if value is None:
        return "-"
    return f"{value:,.3f}" if isinstance(value, float) else f"{value:,}"
