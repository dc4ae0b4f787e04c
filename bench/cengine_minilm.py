"""C engine on the MiniLM sample (sentence embeddings, 2 int64 inputs, 128 tokens).

  1. QDQ ONNX in the riscv scheme: `quantize` (calibration only, --epochs 0 by default) and
     `export` of the bundled MiniLM on the `minilm` recipe, or --onnx an existing one;
  2. the generated C engine (batch 1, sequence length from the recipe: 128);
  3. `compressor.backends.cengine.verify`: host on --n held-out sentences, rv64gc and rv64gcv
     under qemu on the first --emulated of them (bit-exact), cosine to onnxruntime's QDQ
     execution, instructions per inference (RVV vs scalar), sizes, host latency vs onnxruntime;
  4. cosine of engine and onnxruntime to the FP32 PyTorch teacher (what quantization costs).

    python bench/cengine_minilm.py [--onnx model.onnx] [--out bench/out/minilm] [--n 64] [--emulated 4]

The export pass writes such graphs at batch 1 and the calibration length (128 here), the
shapes the engine runs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from compressor.backends import cengine as ce  # noqa: E402
from compressor.backends import get_backend  # noqa: E402
from compressor.backends.cengine.verification import ort_run, ort_session, parity  # noqa: E402


def quantized_onnx(model: Path, out: Path, epochs: int) -> Path:
    from compressor import compress

    config = out / "pipeline.toml"
    config.write_text(f'passes = ["quantize", "export"]\n[quantize]\nepochs = {epochs}\nsensitivity_samples = 16\n')
    result = compress(model, target="riscv", calib="minilm", out=out / "run", config=config, force=True)
    return result.run_dir / "model.onnx"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--onnx", type=Path, default=None, help="an existing QDQ ONNX (skips quantize/export)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "minilm")
    ap.add_argument("--n", type=int, default=64, help="held-out sentences on the host build")
    ap.add_argument("--emulated", type=int, default=4, help="of them, run on rv64gc and rv64gcv under qemu")
    ap.add_argument("--epochs", type=int, default=0)
    ap.add_argument("--runs", type=int, default=20, help="latency runs per round")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    from compressor.calibration import load_calibration, load_recipe
    from compressor.model_io import load_model

    folder = Path(subprocess.check_output([sys.executable, "-m", "samples.minilm.locate"], cwd=ROOT, text=True).strip())
    handle = load_model(folder)
    data = load_calibration(load_recipe("minilm"), handle.spec, folder)
    ids, mask = (x[: args.n].numpy() for x in data.holdout)
    onnx_path = args.onnx or quantized_onnx(folder, args.out, args.epochs)

    t = time.time()
    info = ce.generate(onnx_path, args.out / "engine", dims={"sequence": int(ids.shape[1])})
    gen_s = time.time() - t
    rep = ce.verify(onnx_path, args.out / "engine", [ids, mask], latency_runs=args.runs, latency_rounds=3,
                    emulated_samples=args.emulated)
    import torch

    with torch.no_grad():
        teacher = handle.module.eval()(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
    engine = get_backend("cengine").runner(args.out / "engine")(ids, mask)
    ref = ort_run(ort_session(onnx_path, optimized=False), [ids, mask])
    int8 = ort_run(ort_session(onnx_path, optimized=True), [ids, mask])
    summary = {
        "onnx": str(onnx_path), "sequence": int(ids.shape[1]), "generate_s": round(gen_s, 1),
        "ops": info["ops"], "bit_exact": rep["bit_exact"], "bit_exact_samples": rep["bit_exact_samples"],
        "engine_vs_ort_ref": rep["parity_ref"], "engine_vs_ort_int8": rep["parity_int8"],
        "ort_ref_vs_ort_int8": parity(ref, int8, None),
        "teacher_cosine": {name: parity(y, teacher, None)["cosine_mean"]
                           for name, y in (("engine", engine), ("ort_ref", ref), ("ort_int8", int8))},
        "instructions": rep.get("instructions"), "sizes": rep["sizes"], "latency": rep.get("latency"),
        "passed": rep["passed"],
    }
    (args.out / "report.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    return 0 if rep["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
