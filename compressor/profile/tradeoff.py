"""Accuracy against latency for runs that pruned or searched: the teacher, the intermediate FP32
student, and the final engine, each timed against the teacher in one process (prune: the pruned
and the teacher FP32 in onnxruntime; verify: the engine and the teacher's FP32 engine), so the x
axis is time relative to the teacher. A point joins only where its metric is the verify pass's
(same evaluator, held-out samples); the report says which were left out and why."""
from __future__ import annotations

from typing import Any

X_LABEL = "time relative to the teacher's FP32 (measured against it in one process)"


def _metrics(report: dict[str, Any], name: str) -> dict[str, Any]:
    return next((p["metrics"] for p in report.get("passes", []) if p["name"] == name), {})


def _final_ratio(v: dict[str, Any]) -> float | None:
    """The engine's time over the teacher's FP32 engine, on the device or here at one thread."""
    if "comparison" in v.get("device_latency", {}):
        return v["device_latency"]["comparison"]["b_over_a"]
    return v.get("latency", {}).get("1_thread", {}).get("engine_over_fp32_onnx")


def tradeoff(report: dict[str, Any]) -> dict[str, Any] | None:
    prune, search, verify = _metrics(report, "prune"), _metrics(report, "search"), _metrics(report, "verify")
    if not (prune.get("pruned") or search) or not verify.get("engine_metric"):
        return None
    name = verify["metric_name"]
    points = [{"label": "teacher", "time_vs_teacher": 1.0, "metric": verify["teacher_metric"]["metric"]}]
    omitted = []
    if prune.get("pruned"):
        lat = prune["latency_fp32"]
        if prune["metric_name"] == name:
            points.append({"label": "pruned FP32", "time_vs_teacher": lat["pruned_ms"] / lat["teacher_ms"],
                           "metric": prune["pruned_metric"]})
        else:
            omitted.append(f"pruned FP32: scored by {prune['metric_name']}, not {name}")
    if search:
        omitted.append("searched student FP32: its latency is the search's prediction and distill scores it against "
                       f"the teacher on the validation slice, not by {name} on held-out samples")
    ratio = _final_ratio(verify)
    if ratio is None:
        omitted.append("final engine: not timed against the teacher's FP32 engine in this run")
    else:
        points.append({"label": "final engine", "time_vs_teacher": ratio, "metric": verify["engine_metric"]["metric"]})
    return {"x": X_LABEL, "metric": name, "points": points, "omitted": omitted, "chart": "tradeoff.png"}


def tradeoff_section(t: dict[str, Any] | None) -> list[str]:
    if not t:
        return []
    lines = ["", f"## Accuracy vs latency ({t['metric']} on held-out samples)", "", f"![accuracy vs latency]({t['chart']})",
             "", f"| model | {t['x']} | {t['metric']} |", "|---|---|---|"]
    lines += [f"| {p['label']} | {p['time_vs_teacher']:.3f}x | {p['metric']:.4f} |" for p in t["points"]]
    lines += [f"\nLeft out: {why}." for why in t["omitted"]]
    return lines
