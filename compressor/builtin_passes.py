"""Importing this module registers every pass that ships with the package."""
from .backends import lower  # noqa: F401
from .export import onnx_export, verify  # noqa: F401
from .quantize import quantize_pass  # noqa: F401
