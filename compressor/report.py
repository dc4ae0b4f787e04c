"""report.json (everything, for machines), report.md (for people) and the end-of-run summary."""
from __future__ import annotations

import json
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from .artifacts import write_atomic
from .profile.charts import tradeoff_chart
from .profile.report import device_latency_rows, device_latency_section, layer_section, pass_folder
from .profile.tradeoff import tradeoff, tradeoff_section
from .search.report import search_rows, search_section

_LIBRARIES = ("torch", "onnx", "onnxruntime", "onnxscript", "numpy", "transformers", "optimum", "nncf")


def library_versions() -> dict[str, str]:
    versions = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in _LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def write_reports(run_dir: Path, report: dict[str, Any]) -> None:
    report["tradeoff"] = tradeoff(report)  # pruned or searched runs: accuracy vs latency, and its chart
    if report["tradeoff"]:
        t = report["tradeoff"]
        tradeoff_chart(t["points"], run_dir / t["chart"], "accuracy vs latency", t["x"], t["metric"])
    write_atomic(run_dir / "report.json", json.dumps(report, indent=2, default=str) + "\n")
    write_atomic(run_dir / "report.md", markdown(report))


def _pass_metrics(report: dict[str, Any], name: str) -> dict[str, Any]:
    for p in report.get("passes", []):
        if p["name"] == name:
            return p["metrics"]
    return {}


def _verify_metrics(report: dict[str, Any]) -> dict[str, Any]:
    return _pass_metrics(report, "verify")


def _engine_agreement(parity: dict[str, Any], task: str) -> str:
    """Top-1 agreement for a classifier; cosine otherwise (an embedding's argmax means nothing)."""
    if task == "classification":
        return f"top-1 {parity['top1_agreement'] * 100:.1f}%"
    return f"cosine {parity['cosine_mean']:.5f} (min {parity['cosine_min']:.4f})"


def summary_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    rows = [("status", report["status"] + (f": {report['error']}" if report.get("error") else "")),
            ("target", f"{report['target']['name']} ({report['target']['backend']})")]
    calibration = report.get("calibration", {})
    if calibration.get("data_source", "real") != "real":  # said first: what every number below rests on
        rows.append(("data", calibration["in_words"]))
    rows += _size_rows(report)
    rows += search_rows(_pass_metrics(report, "search"))
    rows += _prune_rows(_pass_metrics(report, "prune"))
    q = _pass_metrics(report, "quantize")
    if q.get("qad_metric") is not None:
        int8 = q.get("int8_layers", q["quantized_layers"] - len(q["kept_float"]))
        rows.append((f"quantization ({q['scheme']}, {q['observer']})",
                     f"{q['metric_name']} teacher {q['teacher_metric']:.4f}, PTQ {q['ptq_metric']:.4f}, "
                     f"QAD {q['qad_metric']:.4f}; {int8} layers int8, "
                     f"{len(q['kept_float'])} kept {q['keep_float_dtype']}, {len(q['float_ops'])} float ops"))
        rows += _kept_float_rows(q)
        eq = q.get("equalization", {})
        if eq.get("pairs"):
            rows.append(("cross-layer equalization", f"{eq['pairs']} layer pairs, {'kept' if eq['applied'] else 'NOT kept'}: "
                         f"PTQ validation divergence {eq['without']['val_divergence']:.3g} without, "
                         f"{eq['with_equalization']['val_divergence']:.3g} with"))
    low = _pass_metrics(report, "lower")
    if "engine_built" in low and not low["engine_built"]:
        rows.append(("engine build", "on the device: run build_engine.sh or build_engine.py there"))
    if "bit_exact" in low:
        checked = low.get("bit_exact_checked", ", ".join(low["builds"]))
        rows.append(("C engine", f"bit-exact {low['bit_exact']} ({checked}); "
                                 f"{_engine_agreement(low['parity_ref'], report['model']['task'])} vs onnxruntime; "
                                 f"arena {low['sizes']['arena_bytes']} B, weights {low['sizes']['weight_bytes']} B"))
        if "instructions" in low:
            i = low["instructions"]
            rows.append(("RISC-V instructions", f"rv64gcv {i['rv64gcv']:,} vs rv64gc {i['rv64gc']:,} per inference "
                                                f"({i['rvv_over_scalar']:.3f}x)"))
        if "latency" in low:
            lat = low["latency"]
            rows.append(("C engine host latency", f"{lat['engine_host_ms']:.3f} ms vs onnxruntime int8 "
                                                  f"{lat['ort_int8_ms']:.3f} ms ({lat['engine_over_ort']:.2f}x)"))
    if "context_model" in low:  # the QNN backend's EP context model
        cpu = low["cpu_nodes"]
        where = (f"{len(cpu)} node(s) fell back to the CPU: " + "; ".join(f"{n['name']} ({n['op']}): {n['reason']}"
                                                                        for n in cpu)) if cpu else "every node on the HTP"
        rows.append(("QNN HTP context", f"HTP v{low['htp_arch']}, soc_model {low['soc_model']}; context model + "
                                        f"binary {low['context_bytes']} B; {where}"))
    if "integer_kernels" in low:
        rows.append(("onnxruntime kernels", f"{low['integer_kernels']} integer, {low['float_compute']} float compute"))
    v = _verify_metrics(report)
    if v.get("latency"):
        verdicts = _speed_verdicts(v)
        if verdicts:
            rows.append(("speed vs FP32 onnxruntime", verdicts))
    if v:
        par = v["parity"]
        line = f"max |diff| {par['max_abs_diff']:.3g}, cosine {par['cosine_mean']:.6f}"
        if "top1_agreement" in par:
            line += f", top-1 agreement {par['top1_agreement'] * 100:.2f}%"
        elif v["precision"] != "fp32" and "teacher_cosine_engine" in par:
            line += (f"; cosine to the teacher: engine {par['teacher_cosine_engine']:.4f}, "
                     f"module {par['teacher_cosine_module']:.4f}")
        on = f", measured on {v['parity_measured_on']['host']}" if v.get("parity_measured_on") else ""
        rows.append((f"parity ({v['precision']}, {v.get('runtime', 'onnxruntime')}{on})", line))
        rows.append((f"{v['metric_name']} ({'labels' if v['labels'] else 'vs teacher'})",
                     f"teacher {v['teacher_metric']['metric']:.4f} -> engine {v['engine_metric']['metric']:.4f} "
                     f"(drop {v['metric_drop']:+.4f}) on {v['holdout_samples']} held-out samples"))
        if "retrieval_agreement" in v["engine_metric"]:
            gate = v.get("min_retrieval_agreement")
            rows.append(("rank-1 retrieval agreement", f"{v['engine_metric']['retrieval_agreement']:.3f} with the "
                         "teacher " + (f"(gated: at least {gate})" if gate else "(reported, not gated on this target)")))
        where = f" ({v.get('latency_where', 'host QDQ reference, not the device')})" if v.get("latency_stand_in") else ""
        for label, lat in v.get("latency", {}).items():
            line = (f"pytorch {lat['pytorch']['median_ms']:.3f} ms -> engine {lat['engine']['median_ms']:.3f} ms "
                    f"(p90 {lat['engine']['p90_ms']:.3f}; {lat['speedup']:.2f}x)")
            if "fp32_onnx" in lat:
                line += (f"; FP32 onnxruntime {lat['fp32_onnx']['median_ms']:.3f} ms "
                         f"(engine {lat['engine_over_fp32_onnx']:.2f}x of it)")
            rows.append((f"latency {label.replace('_', ' ')}{where}", line))
        rows += device_latency_rows(v)
    for p in report.get("passes", []):
        rows.append((f"pass {p['name']}", f"{p['status']} in {p['seconds']:.1f} s"))
    if report.get("engine"):
        rows.append(("engine", report["engine"]["path"]))
    return rows


def _size_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    """The engine against the same model in FP32: the teacher's FP32 ONNX where verify exported it
    (the same format), else its FP32 weights; the input file's size is a packaging detail (a
    torch.export archive can be twice its weights)."""
    sizes = report.get("sizes", {})
    if not sizes.get("engine_bytes"):
        return []
    fp32_onnx = _verify_metrics(report).get("fp32_onnx_bytes")
    base, label = ((fp32_onnx, "the teacher as FP32 ONNX") if fp32_onnx
                   else (sizes.get("fp32_weights_bytes"), "the teacher's FP32 weights"))
    if not base:  # a report from before the baseline was recorded
        base, label = sizes["model_bytes"], "the input file"
    what = f", {sizes['engine_bytes_are']}" if sizes.get("engine_bytes_are") else ""
    return [(f"size (vs {label})", f"{_mb(base)} -> {_mb(sizes['engine_bytes'])} "
                                   f"({base / sizes['engine_bytes']:.2f}x smaller{what}); input file "
                                   f"{_mb(sizes['model_bytes'])}")]


_VERDICT_WORDS = {"faster": "faster", "slower": "NOT faster (slower)", "same": "NOT faster (no difference beyond the noise)"}


def _speed_verdicts(v: dict[str, Any]) -> str:
    """In words, per thread setting: is the engine faster than the teacher as FP32 ONNX in the same
    runtime, beyond the run's own noise (the ratio's spread over the parts of the run)?"""
    parts = []
    for label, lat in v["latency"].items():
        if "verdict" not in lat:
            continue
        parts.append(f"{label.replace('_', ' ')}: {_VERDICT_WORDS[lat['verdict']]}, engine time "
                     f"{lat['engine_over_fp32_onnx']:.2f}x of FP32 (noise +-{lat['engine_over_fp32_onnx_noise']:.2f})")
    return "; ".join(parts)


def _kept_float_rows(q: dict[str, Any]) -> list[tuple[str, str]]:
    """What the layers kept in float cost, and which QAD epoch was kept and why."""
    rows = []
    cost = q.get("kept_float_cost")
    if q["kept_float"] and cost:
        unmet = "" if q.get("accuracy_budget_met", True) else f"accuracy budget {q['accuracy_budget']} NOT met; "
        rows.append((f"kept {q['keep_float_dtype']}", f"{unmet}{len(q['kept_float'])} of {q['quantized_layers']} layers "
                     f"({cost['weights_fraction']:.0%} of the weights, +{cost['extra_bytes'] / 1e6:.3f} MB over int8; "
                     f"{cost['macs_fraction']:.0%} of the MACs not in int8 kernels)"))
    kept = [h for h in q.get("qad_history", []) if h.get("kept")]
    if kept:
        rows.append(("QAD kept", f"epoch {kept[-1]['epoch']} of {len(q['qad_history']) - 1} "
                                 f"({'PTQ' if kept[-1]['epoch'] == 0 else kept[-1]['why']})"))
    return rows


def _prune_rows(p: dict[str, Any]) -> list[tuple[str, str]]:
    if not p:
        return []
    if not p.get("pruned"):
        return [("pruning", f"none: {p.get('reason', 'nothing to prune')}")]
    b, lat = p["budget"], p["latency_fp32"]
    rows = [(f"pruning ({p['family']}, {b['kind']} {b['value']:g})",
             f"MACs {p['macs']['before'] / 1e6:.1f}M -> {p['macs']['after'] / 1e6:.1f}M "
             f"({p['macs']['after'] / p['macs']['before']:.2f}x), prunable params {p['params']['before'] / 1e6:.2f}M -> "
             f"{p['params']['after'] / 1e6:.2f}M; {p['metric_name']} teacher {p['teacher_metric']:.4f} -> "
             f"pruned {p['pruned_metric']:.4f}"),
            ("pruned FP32 latency (1 thread)",
             f"teacher {lat['teacher_ms']:.3f} ms -> pruned {lat['pruned_ms']:.3f} ms ({lat['speedup']:.2f}x"
             f"{' faster' if lat['speedup'] > 1 else ': NOT faster than the teacher'}; {lat['runtime']})")]
    return rows


def _prune_section(report: dict[str, Any]) -> list[str]:
    p = _pass_metrics(report, "prune")
    if not p.get("pruned"):
        return []
    record = next(r for r in report["passes"] if r["name"] == "prune")
    folder = Path(record["output"]).parent.as_posix() if record.get("output") else ""
    lines = ["", "## Structured pruning (CoFi)", ""]
    if folder:
        lines += [f"![units kept per group]({folder}/{p['chart']})", ""]
    lines += ["| group | kind | layer | kept / size |", "|---|---|---|---|"]
    lines += [f"| {r['group']} | {r['kind']} | {r['layer']} | {r['kept']} / {r['size']} |" for r in p["structure"]]
    if p.get("latency_model"):
        m = p["latency_model"]
        lines += ["", f"Latency budget through a cost model: {m['fixed_ms']:.3f} ms + {m['slope_ms']:.3f} ms x MACs "
                      f"fraction, fitted on {m['runtime']} (largest error on the measured variants "
                      f"{m['max_relative_error']:.1%})."]
    lines += ["", "Gate learning (expected kept fraction of the budgeted cost, per epoch): "
              + ", ".join(f"{h['expected_kept']:.1%}" for h in p["gate_history"])]
    if p.get("finetune_history"):
        lines += ["", "Fine-tune after the shrink (validation output error to the teacher, per epoch): "
                  + ", ".join(f"{h['val_output_error']:.3g}" for h in p["finetune_history"])]
    return lines


def summary_table(report: dict[str, Any]) -> str:
    rows = summary_rows(report)
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k.ljust(width)}  {v}" for k, v in rows)


def markdown(report: dict[str, Any]) -> str:
    lines = [f"# Compression report: {Path(report['model']['path']).name} for {report['target']['name']}", ""]
    lines += ["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in summary_rows(report)]
    v = _verify_metrics(report)
    if v:
        lines += ["", "## Parity (engine vs the PyTorch module it was exported from)", "", "| measure | value |", "|---|---|"]
        lines += [f"| {k} | {val:.6g} |" for k, val in v["parity"].items()]
        lines += ["", "## Latency (batch 1, median of interleaved runs)", ""]
        if v.get("latency_where"):
            lines += [f"Measured in {v['runtime']}: {v['latency_where']}.", ""]
        elif v.get("latency_stand_in"):
            lines += [f"The device engine is built on the device, so these are the ONNX file's times in "
                      f"{v['runtime']} on this host, a stand-in that says nothing about the device's speed. "
                      f"Time the built engine where its runtime is installed: `compress profile ENGINE`.", ""]
        latency = v.get("latency", {})
        baseline = all("fp32_onnx" in lat for lat in latency.values()) and bool(latency)
        head = ["threads", "PyTorch eager ms (p90)", "engine ms (p90)", "speedup"]
        if baseline:  # the teacher as FP32 ONNX in the engine's runtime: what quantizing bought
            head += ["FP32 onnxruntime ms (p90)", "engine / FP32 onnxruntime"]
        if latency:  # none here when the engine was timed on a device (device_latency_section)
            lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for lat in latency.values():
            cells = [str(lat["threads"]), f"{lat['pytorch']['median_ms']:.3f} ({lat['pytorch']['p90_ms']:.3f})",
                     f"{lat['engine']['median_ms']:.3f} ({lat['engine']['p90_ms']:.3f})", f"{lat['speedup']:.2f}x"]
            if baseline:
                cells += [f"{lat['fp32_onnx']['median_ms']:.3f} ({lat['fp32_onnx']['p90_ms']:.3f})",
                          f"{lat['engine_over_fp32_onnx']:.2f}x"]
            lines.append("| " + " | ".join(cells) + " |")
        if v.get("fp32_onnx_baseline_error"):
            lines += ["", f"No FP32 onnxruntime baseline: the teacher did not export ({v['fp32_onnx_baseline_error']})."]
        lines += device_latency_section(v) + layer_section(v, pass_folder(report, "verify"))
    lines += search_section(_pass_metrics(report, "search"), next((r for r in report.get("passes", [])
                                                                   if r["name"] == "search"), {}))
    lines += _prune_section(report)
    lines += tradeoff_section(report.get("tradeoff"))
    q = _pass_metrics(report, "quantize")
    if q.get("sensitivity"):
        lines += ["", f"## Quantization sensitivity (one layer quantized at a time, {q['scheme']} scheme)", "",
                  "| layer | op | divergence | relative output error | metric vs teacher |", "|---|---|---|---|---|"]
        lines += [f"| {r['layer']} | {r['op']} | {r.get('divergence', r['output_error']):.3e} | {r['output_error']:.3e} "
                  f"| {r['metric_vs_teacher']:.4f} |" for r in q["sensitivity"]]
        if q.get("kept_float"):
            lines.append(f"\nKept in {q['keep_float_dtype']}: {', '.join(q['kept_float'])}")
        if q.get("float_ops"):
            lines.append(f"\nLeft in float by the scheme: {', '.join(q['float_ops'])}")
    low = _pass_metrics(report, "lower")
    if low.get("device_instructions"):
        lines += ["", "## Building the engine on the device", "", "```", low["device_instructions"].rstrip(), "```"]
    for note in report.get("notes", []):
        lines.append(f"\n> {note}")
    lines += ["", "## Versions", ""] + [f"- {k}: {val}" for k, val in report["versions"].items()]
    return "\n".join(lines) + "\n"


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB"
