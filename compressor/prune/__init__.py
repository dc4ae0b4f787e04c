"""Structured pruning, CoFi-style: structure discovery per model family, hard-concrete L0 gates
with a Lagrangian budget, layerwise distillation, then physical shrink (see structure.py).
CNNs: cnn.py (discover_cnn on an aten graph module; channel analysis in cnn_groups.py, shrink in cnn_shrink.py)."""
