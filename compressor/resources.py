"""Where the data shipped with the package lives (target profiles, calibration recipes).

In a source checkout they sit at the repository root (`targets/`, `calibration/`); an installed
package carries copies under `compressor/_data/` (see setup.py).
"""
from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def data_dir(name: str) -> Path:
    for candidate in (_PACKAGE / "_data" / name, _PACKAGE.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"package data folder '{name}' is missing from the installation")
