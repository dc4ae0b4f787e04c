"""`compress profile ENGINE [ENGINE_B]`: latency, per-layer times and peak memory of engines, on this
host or a device (profile.devices), by the profiler of the engine's backend (Backend.profiler()).

Two engines run alternately in one process (A B A B ...), and the result gives B's time over A's
with the run's own noise on that ratio (latency.ratio_with_noise), so a speedup claim holds on a
noisy machine.
"""
from __future__ import annotations

from pathlib import Path

from ..backends import backend_for_file
from ..errors import CompressError
from .devices import Device, open_device
from .latency import ratio_with_noise, speed_verdict, summarize
from .profiler import EngineProfiler, Settings
from .runner_profiler import RunnerProfiler


def profiler_for(paths: list[Path]) -> EngineProfiler:
    """The profiler of the backend that opens every one of `paths`."""
    for path in paths:
        if not path.exists():
            raise CompressError(f"{path}: file not found")
    backends = [backend_for_file(p) for p in paths]
    if len({b.name for b in backends}) > 1:
        raise CompressError(f"engines of different kinds ({', '.join(b.name for b in backends)}) do not run in one "
                            "process: compare engines of one runtime")
    return backends[0].profiler() or RunnerProfiler(backends[0])


def check_device(profiler: EngineProfiler, device: Device) -> None:
    if device.emulated and not profiler.emulates:
        raise CompressError(f"--device {device.scheme} runs C engines' RISC-V builds under qemu-user; a {profiler.kind} "
                            "engine runs here or on a device (ssh://...)")


def profile_engines(paths: list[Path], settings: Settings, device: Device | str | None = None) -> dict:
    """Statistics of each engine (median/p90/p99/min ms, throughput), its layers in execution
    order, the measuring process's peak memory, host and pid; with two engines, B's time over A's."""
    paths = [Path(p) for p in paths]
    device = device if isinstance(device, Device) else open_device(device)
    profiler = profiler_for(paths)
    check_device(profiler, device)
    raw = profiler.profile(paths, settings, device)
    engines = []
    for entry in raw["engines"]:
        stats = summarize(entry.pop("times_ms"))
        layers = entry.pop("layers", None)
        engines.append({**entry, **stats, **({"layers": layers, "layers_total_ms": sum(r["ms"] for r in layers)}
                                            if layers else {})})
    result = {"device": device.label, "remote": device.remote, "emulated": device.emulated, "kind": profiler.kind,
              "measured_on": {k: raw.get(k) for k in ("host", "pid", "ssh_connection")}, "runtime": raw.get("runtime"),
              "threads": settings.threads, "peak_rss_bytes": raw.get("peak_rss_bytes"), "engines": engines}
    for key in ("instructions_note", "timing_note", "alternation"):
        if key in raw:
            result[key] = raw[key]
    if len(engines) == 2:
        result["comparison"] = compare(engines[1], engines[0])
    return result


def compare(b: dict, a: dict) -> dict:
    """B's median time over A's, its noise (half the ratio's spread over the run's parts) and the verdict."""
    ratio, noise = ratio_with_noise(b, a)
    return {"b_over_a": ratio, "noise": noise, "verdict": speed_verdict(ratio, noise),
            "part_ratios": [x / y for x, y in zip(b["part_medians_ms"], a["part_medians_ms"])]}


def top_layers(engine: dict, n: int = 15) -> list[dict]:
    """The `n` slowest layers (most instructions where counted: emulated times say little), each with
    its share of the engine's summed layer time."""
    total = engine.get("layers_total_ms") or 1.0
    layers = engine.get("layers", [])
    cost = "instructions" if layers and all("instructions" in r for r in layers) else "ms"
    rows = sorted(layers, key=lambda r: -r[cost])[:n]
    return [{**r, "share": r["ms"] / total} for r in rows]


def table(result: dict, top: int = 15) -> str:
    """The result for people: one latency line per engine, its slowest layers, the comparison."""
    where = result["device"] + (f" (host {result['measured_on']['host']}, pid {result['measured_on']['pid']})"
                                if result["remote"] else "")
    lines = [f"measured on {where}: {result['runtime']}, {result['threads']} thread(s)"
             + (f", peak memory {result['peak_rss_bytes'] / 2**20:.1f} MiB" if result.get("peak_rss_bytes") else "")]
    if result.get("timing_note"):
        lines.append(f"  note: {result['timing_note']}")
    for name, e in zip("AB", result["engines"]):
        label = f"{name}: " if len(result["engines"]) > 1 else ""
        lines.append(f"{label}{e['engine']}: median {e['median_ms']:.3f} ms, p90 {e['p90_ms']:.3f}, "
                     f"p99 {e['p99_ms']:.3f}, min {e['min_ms']:.3f} ms over {e['runs']} runs; "
                     f"{e['throughput_per_s']:.1f} inferences/s; inputs {e.get('input_shapes')}")
        if e.get("instructions") is not None:
            lines.append(f"  {e['instructions']:,} instructions per inference ({result.get('instructions_note', '')})")
        if e.get("layers"):
            with_insns = any("instructions" in r for r in e["layers"])
            lines.append(f"  slowest {min(top, len(e['layers']))} of {len(e['layers'])} layers "
                         f"(sum {e['layers_total_ms']:.3f} ms per inference):")
            for r in top_layers(e, top):
                insns = f"  {r['instructions']:>12,} insns" if with_insns and "instructions" in r else ""
                lines.append(f"    {r['ms']:9.4f} ms {r['share']:6.1%}{insns}  {r['op']:<18} {r['name']}")
    if "comparison" in result:
        c = result["comparison"]
        words = {"faster": "B is faster", "slower": "B is SLOWER", "same": "no difference beyond the noise"}
        lines.append(f"B / A time: {c['b_over_a']:.3f}x (noise +-{c['noise']:.3f} over {len(c['part_ratios'])} "
                     f"parts of the run, {result.get('alternation', 'alternated in one process')}): "
                     f"{words[c['verdict']]}")
    return "\n".join(lines)


def per_node(path: Path, runs: int = 50, threads: int = 1) -> list[dict]:
    """onnxruntime's per-node mean time ({"node", "op", "mean_ms"}), slowest first, on this host."""
    result = profile_engines([path], Settings(runs=1, warmup=1, threads=threads, per_layer_runs=runs))
    rows = [{"node": r["name"], "op": r["op"], "mean_ms": r["ms"]} for r in result["engines"][0]["layers"]]
    return sorted(rows, key=lambda r: -r["mean_ms"])
