"""onnxruntime's QNN execution provider (the `onnxruntime-qnn` plugin): importing it, registering
it once per process, and the session options that put a graph on the HTP backend.

On an x86 host the wheel's libQnnHtp.so runs the HTP graph in Qualcomm's simulator, so QNN
compilation and HTP numerics are real here; its timings are the simulator's, not a phone's.
"""
from __future__ import annotations

import contextlib
import functools
import os
import sys
import tempfile
from dataclasses import dataclass

from ...errors import CompressError

EP_NAME = "QNNExecutionProvider"
INSTALL = 'pip install -e ".[qnn]"  (installs onnxruntime-qnn, the QNN execution provider with the HTP backend)'


@functools.lru_cache(maxsize=1)
def qnn_module():
    """The onnxruntime_qnn package, its EP library registered with onnxruntime; a CompressError
    saying what to install where it does not import."""
    import onnxruntime as ort

    try:
        import onnxruntime_qnn
    except ImportError as e:
        raise CompressError(f"the QNN backend needs onnxruntime-qnn ({e}): {INSTALL}") from None
    try:
        ort.register_execution_provider_library(EP_NAME, onnxruntime_qnn.get_library_path())
    except Exception as e:  # noqa: BLE001 - a wheel for another onnxruntime fails in several ways
        if "already registered" not in str(e):
            raise CompressError(f"onnxruntime {ort.__version__} cannot load the QNN execution provider "
                                f"({str(e).splitlines()[0]}): {INSTALL}") from None
    return onnxruntime_qnn


def qnn_available() -> bool:
    try:
        qnn_module()
    except CompressError:
        return False
    return True


@dataclass(frozen=True)
class HtpOptions:
    """What the session is compiled for: the chip (`soc_model`, `htp_arch`) and how it runs."""

    htp_arch: int = 0  # 0: QNN's default (a context model carries the one it was compiled for)
    soc_model: int = 0
    performance_mode: str = "default"
    profiling: dict | None = None  # the EP's profiling options (profiling.py)

    def provider_options(self) -> dict[str, str]:
        options = {"backend_path": qnn_module().get_qnn_htp_path(), "htp_performance_mode": self.performance_mode,
                   # the graph's own input Q and output DQ run on the HTP too: with the default (1)
                   # the EP hands them to the CPU, which a session without CPU fallback refuses
                   "offload_graph_io_quantization": "0"}
        if self.htp_arch:
            options.update(htp_arch=str(self.htp_arch), soc_model=str(self.soc_model))
        return {**options, **(self.profiling or {})}

    @classmethod
    def of(cls, target) -> HtpOptions:
        return cls(htp_arch=target.device.htp_arch, soc_model=target.device.soc_model,
                   performance_mode=target.settings.htp_performance_mode)


def session_options(htp: HtpOptions, cpu_fallback: bool = False, log_level: int = 3, **config: str):
    """SessionOptions with the QNN EP on the HTP backend; `config`: session config entries
    (dots as in onnxruntime's keys, e.g. {"ep.context_enable": "1"})."""
    import onnxruntime as ort

    qnn_module()
    devices = [d for d in ort.get_ep_devices() if d.ep_name == EP_NAME]
    if not devices:
        raise CompressError(f"onnxruntime lists no {EP_NAME} device although onnxruntime-qnn is registered: {INSTALL}")
    options = ort.SessionOptions()
    options.log_severity_level = log_level
    # a node the HTP cannot take fails the session instead of running silently on the CPU
    options.add_session_config_entry("session.disable_cpu_ep_fallback", "0" if cpu_fallback else "1")
    for key, value in config.items():
        options.add_session_config_entry(key, value)
    options.add_provider_for_devices(devices, htp.provider_options())
    return options


@contextlib.contextmanager
def native_output():
    """Collect what onnxruntime and the QNN libraries print from C++ (file descriptors 1 and 2:
    the EP's log, the HTP library's banner on stdout) while a session is created, so that it
    neither reaches the user's terminal nor corrupts `--json` on stdout. Yields a callable that
    returns the text collected so far."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile(mode="w+") as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)

        def text() -> str:
            sink.flush()
            sink.seek(0)
            return sink.read()
        try:
            yield text
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


def create_session(path, options):
    """An InferenceSession, with onnxruntime's native output collected (see native_output)."""
    import onnxruntime as ort

    with native_output():
        return ort.InferenceSession(str(path), options)
