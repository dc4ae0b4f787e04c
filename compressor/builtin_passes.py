"""Importing this module registers every pass that ships with the package."""
from .export import onnx_export, verify  # noqa: F401
