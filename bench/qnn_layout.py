"""Our QNN HTP layout against onnxruntime's own QNN quantizer (the reference for what the QNN EP
accepts): the same FP32 teacher quantized by `onnxruntime.quantization.execution_providers.qnn`
(`qnn_preprocess_model` + `get_qnn_qdq_config` + `quantize`) and by our pipeline (`--target npu`,
quantize + export, no fine-tuning), compared tensor kind by tensor kind, and both compiled on the
HTP backend (the simulator) with CPU fallback disabled.

    python bench/qnn_layout.py [--out DIR]       # writes bench/results/qnn_layout.json
    python bench/qnn_layout.py --out DIR --reuse # compare the two graphs an earlier run left in DIR
"""
from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import log  # noqa: E402

from compressor import compress  # noqa: E402
from compressor.backends.qnn import HtpOptions, cpu_nodes  # noqa: E402
from compressor.backends.qnn.prepare import fix_shapes  # noqa: E402
from compressor.datasets.mnist import load_mnist_split  # noqa: E402
from compressor.export.onnx_export import export_onnx  # noqa: E402
from compressor.model_io import load_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TEACHER = REPO / "samples" / "mnist" / "teacher.pt2"


def layout(path: Path) -> dict:
    """What each kind of tensor is quantized to: activation and weight dtypes and granularity, the
    bias type, and which compute ops have Q/DQ on their inputs and outputs."""
    model = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    consumers = collections.defaultdict(list)
    for n in model.graph.node:
        for i in n.input:
            consumers[i].append(n)
    kinds = collections.Counter()
    for dq in (n for n in model.graph.node if n.op_type == "DequantizeLinear"):
        data = inits.get(dq.input[0])
        zero = inits.get(dq.input[2]) if len(dq.input) > 2 else None
        scale = inits.get(dq.input[1])
        per_channel = scale is not None and scale.size > 1
        dtype = str((data if data is not None else zero).dtype) if (data is not None or zero is not None) else "?"
        users = {u.op_type for u in consumers[dq.output[0]]}
        if data is not None and data.dtype == np.int32:
            role = "bias"
        elif data is not None:
            role = "weight"
        else:
            role = "activation"
        # zero point 0: a range that starts at 0 (after ReLU) in the asymmetric scheme
        sym = "" if role != "activation" or zero is None else ("zero point 0" if not zero.any() else "zero point > 0")
        kinds[f"{role} {dtype} {'per-channel' if per_channel else 'per-tensor'} {sym}".strip() + f" -> {'/'.join(sorted(users))}"] += 1
    compute = [n for n in model.graph.node if n.op_type not in ("QuantizeLinear", "DequantizeLinear")]
    unquantized_out = [f"{n.name} ({n.op_type})" for n in compute
                       if any(o and not any(c.op_type == "QuantizeLinear" for c in consumers[o]) for o in n.output)
                       and not all(o in {g.name for g in model.graph.output} for o in n.output)]
    return {"dq_kinds": dict(sorted(kinds.items())), "ops": dict(collections.Counter(n.op_type for n in compute)),
            "outputs_without_q": unquantized_out}


def reference(fp32: Path, out: Path, calib: np.ndarray) -> Path:
    from onnxruntime.quantization import CalibrationDataReader, QuantType, quantize
    from onnxruntime.quantization.execution_providers.qnn import get_qnn_qdq_config, qnn_preprocess_model

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{"x": calib[i:i + 1]} for i in range(len(calib))])

        def get_next(self):
            return next(self.items, None)

    pre = out / "fp32_pre.onnx"
    if not qnn_preprocess_model(str(fp32), str(pre)):
        pre = fp32
    config = get_qnn_qdq_config(str(pre), Reader(), activation_type=QuantType.QUInt8,
                                weight_type=QuantType.QInt8, per_channel=True)
    path = out / "ort_qnn.onnx"
    quantize(str(pre), str(path), config)
    return path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--reuse", action="store_true", help="the graphs of an earlier run in --out")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="qnn_layout_"))
    out.mkdir(parents=True, exist_ok=True)
    ref, ours = out / "ort_qnn.onnx", out / "ours_static.onnx"
    if not (args.reuse and ref.is_file() and ours.is_file()):
        quantize_both(out, ours)  # writes ref too
    htp = HtpOptions(73, 43)
    result = {"model": str(TEACHER.relative_to(REPO)), "htp": "v73 soc_model 43 (simulator)"}
    for name, path in (("onnxruntime_qnn_config", ref), ("ours", ours)):
        result[name] = {**layout(path), "htp_rejected": [str(p) for p in cpu_nodes(path, htp)]}
    print(json.dumps(result, indent=2))
    (REPO / "bench" / "results").mkdir(exist_ok=True)
    (REPO / "bench" / "results" / "qnn_layout.json").write_text(json.dumps(result, indent=2) + "\n")


def quantize_both(out: Path, ours: Path) -> None:
    x, _, _, _ = load_mnist_split(seed=0)
    teacher = load_model(TEACHER)
    fp32 = out / "fp32.onnx"
    export_onnx(teacher.module, teacher.spec, fp32)
    fixed = fix_shapes(onnx.load(str(fp32)), {"x": (1, 1, 28, 28)})
    onnx.save(fixed, str(fp32))
    log("onnxruntime's QNN quantizer ...")
    reference(fp32, out, x[:128].astype(np.float32))
    config = out / "ours.toml"
    config.write_text('passes = ["quantize", "export"]\n[quantize]\nepochs = 0\n')
    log("ours (--target npu, quantize + export) ...")
    run = compress(TEACHER, target="npu", calib="mnist", out=out / "run", config=config, force=True, quiet=True)
    onnx.save(fix_shapes(onnx.load(str(run.engine)), {"x": (1, 1, 28, 28)}), str(ours))


if __name__ == "__main__":
    main()
