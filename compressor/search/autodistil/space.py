"""AutoDistil's search space: K compact sub-spaces of a BERT teacher, declared as data.

A subnet is the teacher's first `layers` layers, first `hidden` hidden dims, first `heads`
attention heads (of the teacher's head width) and first `ffn` FFN dims, the usual weight-sharing
scheme. heads = hidden / the teacher's head width, so the subnet is a plain BertConfig (whose
attention width is its hidden size) and its heads are the teacher's first heads, unchanged.

Each sub-space lists fractions of the teacher's sizes per dimension; its candidates are every
combination, rounded to whole layers, whole heads and multiples of `ffn_unit`. One supernet is
trained per sub-space (AutoDistil: sub-spaces of similar size train without the large subnets
starving the small ones). An encoder whose output is its hidden state (a sentence embedding)
keeps the teacher's hidden size: its consumers expect that width and the search compares the
embedding with the teacher's by cosine.
"""
from __future__ import annotations

import itertools
import random
from dataclasses import asdict, dataclass

from ...errors import CompressError


@dataclass(frozen=True)
class SubSpace:
    name: str
    layers: tuple[float, ...]  # fractions of the teacher's layers
    hidden: tuple[float, ...]  # of its hidden size (rounded to whole heads)
    ffn: tuple[float, ...]  # of its FFN size (rounded to multiples of ffn_unit)


# tiny / small / base budgets, as in AutoDistil (there: fixed sizes for BERT-base; here fractions,
# so any BERT-family teacher gets the same three). On MiniLM-L6 (6 x 384, FFN 1536) at 128 tokens
# `small` spans about 34% to 62% of the encoder's MACs.
SUBSPACES: dict[str, SubSpace] = {s.name: s for s in (
    SubSpace("tiny", layers=(0.25, 0.34, 0.5), hidden=(0.5, 0.67), ffn=(0.25, 0.375, 0.5)),
    SubSpace("small", layers=(0.5, 0.67), hidden=(0.75, 1.0), ffn=(0.375, 0.5, 0.625, 0.75)),
    SubSpace("base", layers=(0.67, 0.83, 1.0), hidden=(1.0,), ffn=(0.625, 0.75, 0.875, 1.0)),
)}


def subspaces(names) -> list[SubSpace]:
    """The sub-spaces by name (a comma-separated string or a list); None or "all": every one."""
    if names is None or names == "all":
        return list(SUBSPACES.values())
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in names if n not in SUBSPACES]
    if unknown or not names:
        raise CompressError(f"unknown AutoDistil sub-space {', '.join(unknown) or '(none)'}; "
                            f"known: {', '.join(SUBSPACES)}")
    return [SUBSPACES[n] for n in names]


@dataclass(frozen=True)
class TeacherDims:
    """The uniform sizes of a BERT teacher."""

    layers: int
    hidden: int
    heads: int
    ffn: int
    hidden_fixed: bool  # the output is the hidden state: subnets keep its width

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def ffn_unit(self) -> int:
        return max(1, self.ffn // 48)  # 32 for BERT's 4 x hidden FFN at hidden 384


@dataclass(frozen=True, order=True)
class SubnetSpec:
    layers: int
    hidden: int
    heads: int
    ffn: int

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "SubnetSpec":
        return cls(**{k: int(data[k]) for k in ("layers", "hidden", "heads", "ffn")})

    def describe(self) -> str:
        return f"{self.layers} layers x hidden {self.hidden} ({self.heads} heads), FFN {self.ffn}"


def full_spec(dims: TeacherDims) -> SubnetSpec:
    return SubnetSpec(dims.layers, dims.hidden, dims.heads, dims.ffn)


def _choices(fractions: tuple[float, ...], full: int, unit: int) -> list[int]:
    return sorted({min(full, max(unit, unit * round(f * full / unit))) for f in fractions})


def dimension_choices(space: SubSpace, dims: TeacherDims) -> dict[str, list[int]]:
    """Each dimension's sizes in `space` for this teacher."""
    hidden = [dims.hidden] if dims.hidden_fixed else _choices(space.hidden, dims.hidden, dims.head_dim)
    return {"layers": _choices(space.layers, dims.layers, 1), "hidden": hidden,
            "ffn": _choices(space.ffn, dims.ffn, dims.ffn_unit)}


def candidates(space: SubSpace, dims: TeacherDims) -> list[SubnetSpec]:
    """Every subnet of the sub-space, smallest first."""
    c = dimension_choices(space, dims)
    return sorted(SubnetSpec(layers, hidden, hidden // dims.head_dim, ffn)
                  for layers, hidden, ffn in itertools.product(c["layers"], c["hidden"], c["ffn"]))


def sandwich(space: SubSpace, dims: TeacherDims, rng: random.Random, random_subnets: int) -> list[SubnetSpec]:
    """The subnets one training step distils (the sandwich rule): the largest and the smallest of
    the sub-space, and `random_subnets` drawn with each dimension chosen independently."""
    c = dimension_choices(space, dims)

    def spec(layers: int, hidden: int, ffn: int) -> SubnetSpec:
        return SubnetSpec(layers, hidden, hidden // dims.head_dim, ffn)

    picks = [spec(max(c["layers"]), max(c["hidden"]), max(c["ffn"])),
             spec(min(c["layers"]), min(c["hidden"]), min(c["ffn"]))]
    picks += [spec(rng.choice(c["layers"]), rng.choice(c["hidden"]), rng.choice(c["ffn"])) for _ in range(random_subnets)]
    return picks
