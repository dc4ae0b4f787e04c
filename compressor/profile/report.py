"""The profile's part of report.md: latency measured on a device (engine against the teacher's FP32
engine, alternated there), and the engine's time per layer with its chart."""
from __future__ import annotations

from typing import Any

_WORDS = {"faster": "faster", "slower": "NOT faster (slower)", "same": "NOT faster (no difference beyond the noise)"}


def pass_folder(report: dict[str, Any], name: str) -> str:
    """The run-folder name of pass `name` (NN-name, NN its position in the pipeline)."""
    for i, record in enumerate(report.get("passes", []), start=1):
        if record["name"] == name:
            return f"{i:02d}-{name}"
    return ""


def _where(d: dict[str, Any]) -> str:
    on = d.get("measured_on") or {}
    return f"{d['device']} (host {on.get('host')}, pid {on.get('pid')})"


def device_latency_rows(v: dict[str, Any]) -> list[tuple[str, str]]:
    d = v.get("device_latency")
    if not d:
        return []
    e = d["engine"]
    line = f"engine {e['median_ms']:.3f} ms (p90 {e['p90_ms']:.3f}, {e['throughput_per_s']:.0f}/s)"
    if "comparison" in d:
        c = d["comparison"]
        line += (f"; FP32 {d['fp32_onnx']['median_ms']:.3f} ms: {_WORDS[c['verdict']]}, engine time {c['b_over_a']:.2f}x "
                 f"of FP32 (noise +-{c['noise']:.2f}, alternated on the device)")
    return [(f"latency 1 thread, measured on {_where(d)}", line)]


def device_latency_section(v: dict[str, Any]) -> list[str]:
    d = v.get("device_latency")
    if not d:
        return []
    lines = ["", f"Measured on {_where(d)} with {d['runtime']}, batch 1, one thread; the engines alternated in one "
                 "process there (A B A B ...).", "",
             "| engine | median ms | p90 ms | p99 ms | min ms | inferences/s |", "|---|---|---|---|---|---|"]
    for label, key in (("teacher FP32", "fp32_onnx"), ("ours", "engine")):
        if key in d:
            e = d[key]
            lines.append(f"| {label} | {e['median_ms']:.3f} | {e['p90_ms']:.3f} | {e['p99_ms']:.3f} | {e['min_ms']:.3f} "
                         f"| {e['throughput_per_s']:.1f} |")
    if "comparison" in d:
        c = d["comparison"]
        lines += ["", f"Ours over the teacher's FP32 engine: {c['b_over_a']:.3f}x the time (noise +-{c['noise']:.3f}, the "
                      f"ratio's spread over {len(c['part_ratios'])} parts of the run): {_WORDS[c['verdict']]}."]
    if d.get("peak_rss_bytes"):
        lines.append(f"Peak memory of the measuring process: {d['peak_rss_bytes'] / 2**20:.1f} MiB.")
    return lines


def layer_section(v: dict[str, Any], folder: str, top: int = 10) -> list[str]:
    lp = v.get("layer_profile")
    if not lp:
        return []
    note = " (emulated: not device times)" if lp.get("emulated") else ""
    lines = ["", f"## Time per layer ({lp['runtime']} on {lp['device']}{note})", ""]
    if folder:
        lines += [f"![time per layer]({folder}/{lp['chart']})", ""]
    total = lp["layers_total_ms"] or 1.0
    lines += ["| layer | op | ms | share |", "|---|---|---|---|"]
    lines += [f"| {r['name']} | {r['op']} | {r['ms']:.4f} | {r['ms'] / total:.1%} |"
              for r in sorted(lp["layers"], key=lambda r: -r["ms"])[:top]]
    return lines
