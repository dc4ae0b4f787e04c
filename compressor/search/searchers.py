"""Which searcher finds a student for which model family, imported only when used: DisWOT for CNNs
(cnn_search.py), AutoDistil for Transformer encoders (the autodistil subpackage). Every searcher is
`search(teacher, data: SearchData, constraints: Constraints, cfg: SearchConfig, progress) -> SearchOutcome`."""
from __future__ import annotations

import importlib
from typing import Callable

import torch

from ..artifacts import InputSpec
from ..errors import CompressError, first_line
from ..prune.discover import DISCOVERERS

SEARCHERS: dict[str, str] = {
    "cnn": "compressor.search.cnn_search:search",
    "transformer": "compressor.search.autodistil:search",
}
FALLBACK_FAMILY = "cnn"  # any torch.export-able model: its graph is searched as a CNN's


def family_of(module: torch.nn.Module, spec: InputSpec, example: tuple[torch.Tensor, ...]) -> str:
    """The model family by the prune package's discoverers (a Hugging Face encoder is recognised
    by its structure); the CNN discoverer is not run here: the CNN searcher analyses the graph itself."""
    for family, find in DISCOVERERS.items():
        if family != FALLBACK_FAMILY and family in SEARCHERS and find(module, spec, example) is not None:
            return family
    return FALLBACK_FAMILY


def load_searcher(family: str) -> Callable:
    where = SEARCHERS.get(family)
    if where is None:
        raise CompressError(f"search: no student searcher for {family} models; searchers exist for {', '.join(SEARCHERS)}")
    module_name, _, function = where.partition(":")
    try:
        return getattr(importlib.import_module(module_name), function)
    except (ImportError, AttributeError) as e:
        raise CompressError(f"search: the {family} searcher ({where}) is not available in this installation: "
                            f"{first_line(e)}") from None
