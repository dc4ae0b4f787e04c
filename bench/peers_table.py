"""The README's table of `bench/quantize_vs_peers.py` accuracy runs, from the committed results.

    python bench/peers_table.py    # prints the markdown table (both samples x every target) and
                                   # writes it to bench/results/quantize_vs_peers_all.json, the
                                   # file bench/check_readme.py compares the README's table with

Reads bench/results/quantize_vs_peers_SAMPLE_TARGET.json; one line per run: held-out top-1 of the
teacher (FP32 ONNX), ours, onnxruntime quantize_static and NNCF 3.4 PTQ (BN folded first), the QAD
epoch kept and why, and whether the issue's criteria passed. A peer's cell also gives the digits only
the peer and only ours got right, and the exact sign test's p on them (p >= 0.05: the difference is
within the sampling noise of 1000 digits).
"""
from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
SAMPLES = ("mnist", "mnist_mobilenet")
TARGETS = ("x86-cpu", "jetson", "npu", "riscv")


def _top1(rows: dict, key: str) -> str:
    row = rows.get(key)
    if row is None:
        return "-"
    return f"failed: {row['error'][:40]}" if "error" in row else f"{100 * row['top1']:.1f}%"


def _vs_ours(rows: dict, key: str) -> str:
    """The peer's top-1, and how many digits only it or only ours got right with the paired test's p."""
    paired = rows.get(key, {}).get("paired_vs_ours")
    return _top1(rows, key) + (f" ({paired['only_peer_right']} vs {paired['only_ours_right']}, p={paired['p']:.2f})"
                               if paired else "")


def table() -> str:
    lines = ["| sample | target | FP32 | ours (agreement with FP32) | ORT quantize_static | NNCF PTQ (BN folded) "
             "| QAD kept | criteria |", "|---|---|---|---|---|---|---|---|"]
    for sample in SAMPLES:
        for target in TARGETS:
            path = RESULTS / f"quantize_vs_peers_{sample}_{target}.json"
            if not path.exists():
                continue
            record = json.loads(path.read_text())
            rows = {r["key"]: r for r in record["rows"]}
            ours = rows.get("ours", {}).get("details", {})
            kept = ours.get("qad_kept_epoch")
            history = ours.get("qad_history") or []
            why = (ours.get("qad_kept_why", "") if kept else
                   "PTQ; " + "; ".join(f"epoch {h['epoch']} {h['why'].split(',')[0]}" for h in history[1:]))
            verdicts = [c["passed"] for c in record["criteria"] if c["passed"] is not None]
            agree = rows.get("ours", {}).get("agreement_fp32")
            lines.append(f"| {sample} | {target} | {_top1(rows, 'fp32')} | {_top1(rows, 'ours')}"
                         f"{'' if agree is None else f' ({100 * agree:.1f}%)'} | "
                         f"{_vs_ours(rows, 'ort_static')} | {_vs_ours(rows, 'nncf_bnfold')} | "
                         f"{'-' if kept is None else f'epoch {kept} ({why})'} | "
                         f"{sum(verdicts)}/{len(verdicts)} passed |")
    return "\n".join(lines)


if __name__ == "__main__":
    text = table()
    (RESULTS / "quantize_vs_peers_all.json").write_text(json.dumps({"table": text}, indent=1) + "\n")
    print(text)
