"""The search spaces' choices, as data. `DERIVED` shapes the space derived from the teacher's own
graph; `FAMILIES` declares the built-in student families (selected with search.space = NAME),
whose networks builders.py builds for the teacher's input channels, resolution and classes."""
from __future__ import annotations

# The teacher's graph, narrowed and shortened: each coupled channel group takes one of these
# fractions of its width (rounded to multiples of round_to), each removable residual block is kept
# or removed. FIELD-NOTES: widths that are multiples of 16 run best in onnxruntime's kernels.
DERIVED = {
    "width_ratios": (0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0),
    "round_to": 8,
}

# family -> stages; each stage: width choices, depth (blocks) choices, stride of its first block,
# and for inverted residual blocks the expansion choices.
FAMILIES = {
    "resnet": {
        "block": "basic",
        "stem": (8, 16, 24, 32),
        "stages": (
            {"widths": (8, 16, 24, 32, 48), "depths": (1, 2, 3), "stride": 1},
            {"widths": (16, 32, 48, 64, 96), "depths": (1, 2, 3), "stride": 2},
            {"widths": (32, 64, 96, 128, 192), "depths": (1, 2, 3), "stride": 2},
        ),
    },
    "mobilenetv2": {
        "block": "inverted",
        "stem": (8, 16, 32),
        "stages": (
            {"widths": (8, 16, 24), "depths": (1, 2), "stride": 1, "expansions": (1, 3, 6)},
            {"widths": (16, 24, 32), "depths": (1, 2, 3), "stride": 2, "expansions": (3, 6)},
            {"widths": (32, 48, 64), "depths": (1, 2, 3), "stride": 2, "expansions": (3, 6)},
            {"widths": (64, 96, 128), "depths": (1, 2), "stride": 1, "expansions": (3, 6)},
        ),
    },
}
