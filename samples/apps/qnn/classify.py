"""Classify images with a QNN EP context model (what `compress --target npu` writes to
<run>/qnn/): the compiled HTP graph loads as it is, nothing is compiled on the phone.

    python samples/apps/qnn/classify.py out/run/qnn/model_ctx.onnx digits.npy [--json]

digits.npy holds N inputs shaped like the model's (e.g. N x 1 x 28 x 28 floats in [0, 1]). Needs
onnxruntime and onnxruntime-qnn only (on a Snapdragon the HTP runs it; on x86, Qualcomm's
simulator). CPU fallback is disabled: a context model that the HTP cannot run fails to load.
"""
import argparse
import json
import sys

import numpy as np
import onnxruntime as ort
import onnxruntime_qnn


def htp_session(path: str) -> ort.InferenceSession:
    ort.register_execution_provider_library("QNNExecutionProvider", onnxruntime_qnn.get_library_path())
    devices = [d for d in ort.get_ep_devices() if d.ep_name == "QNNExecutionProvider"]
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    options.add_provider_for_devices(devices, {"backend_path": onnxruntime_qnn.get_qnn_htp_path()})
    return ort.InferenceSession(path, options)


def classify(session: ort.InferenceSession, inputs: np.ndarray) -> list[int]:
    """One call per sample: the graph was compiled for the batch it was given (1)."""
    name = session.get_inputs()[0].name
    batch = session.get_inputs()[0].shape[0]
    classes = []
    for start in range(0, len(inputs), batch):
        chunk = inputs[start:start + batch]
        logits = session.run(None, {name: chunk.astype(np.float32)})[0]
        classes += [int(c) for c in logits.argmax(-1)]
    return classes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("context_model")
    parser.add_argument("inputs", help=".npy file of N inputs")
    parser.add_argument("--json", action="store_true", help="print the answer as JSON")
    args = parser.parse_args()
    try:
        session = htp_session(args.context_model)
    except Exception as e:  # noqa: BLE001 - onnxruntime raises several unrelated types
        print(f"{args.context_model}: cannot load on the HTP: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    inputs = np.load(args.inputs)
    classes = classify(session, inputs)
    if args.json:
        print(json.dumps({"providers": session.get_providers(), "classes": classes}))
    else:
        for i, c in enumerate(classes):
            print(f"input {i}: class {c}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
