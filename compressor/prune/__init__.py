"""Structured pruning, CoFi-style: structure discovery per model family, hard-concrete L0 gates
with a Lagrangian budget, layerwise distillation, then physical shrink (see structure.py)."""
