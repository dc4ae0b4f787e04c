"""AutoDistil's options. The search pass hands over its own config object: every field here is
read from it by name where it has one (`settings`), so the pass's config needs none of them."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass
class AutoDistilConfig:
    subspaces: str = "all"  # comma-separated names from space.SUBSPACES, or "all"
    epochs: int = 3  # task-agnostic supernet training, per sub-space
    # MiniLM-L6, `small` supernet, 256 sentences: lr 1e-4 x 3 epochs reached validation cosine 0.35,
    # 5e-4 x 8 epochs 0.58 (bench/autodistil_bench.py)
    lr: float = 5e-4
    batch: int = 32
    random_subnets: int = 2  # per step, beside the largest and the smallest (sandwich rule)
    # + this weight x normalised MSE of the output to the teacher's, for an embedding encoder (whose
    # output, the pooled hidden state, is what its users consume and what the search scores); MiniLM
    # matches attention relations only, which leave the hidden states free: 0 is pure MiniLM
    output_weight: float = 1.0
    relation_heads: int | None = None  # None: the largest that divides every subnet's head count
    val_fraction: float = 0.2  # of the training text: what ranks subnets and epochs
    patience: int = 100  # epochs without a better validation score; the best epoch is kept anyway
    sequence: int | None = None  # tokens at which MACs are counted; None: the data's padded length
    seed: int = 0

    def __post_init__(self):
        if self.epochs < 0 or self.batch < 1 or self.lr <= 0 or self.random_subnets < 0 or self.output_weight < 0:
            raise ValueError("epochs must be >= 0, batch >= 1, lr > 0, random_subnets and output_weight >= 0")
        if not 0 < self.val_fraction < 1:
            raise ValueError("val_fraction must be in (0, 1)")
        if self.relation_heads is not None and self.relation_heads < 1:
            raise ValueError("relation_heads must be >= 1")


def settings(cfg) -> AutoDistilConfig:
    """AutoDistilConfig from any object (None: the defaults): the fields it has, by name."""
    if isinstance(cfg, AutoDistilConfig):
        return cfg
    given = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(AutoDistilConfig)
             if cfg is not None and getattr(cfg, f.name, None) is not None}
    return AutoDistilConfig(**given)
