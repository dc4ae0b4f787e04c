"""Progress and messages on stderr, so stdout stays clean for `--json`."""
from __future__ import annotations

import sys
from typing import Iterable, TypeVar

from tqdm import tqdm

T = TypeVar("T")


class Progress:
    def __init__(self, quiet: bool = False):
        self.quiet = quiet

    def bar(self, items: Iterable[T], desc: str, total: int | None = None) -> Iterable[T]:
        # delay=1: a bar appears only for loops that take longer than a second.
        return tqdm(items, desc=desc, total=total, disable=self.quiet, file=sys.stderr,
                    delay=1.0, mininterval=0.5, leave=False, dynamic_ncols=True)

    def log(self, message: str) -> None:
        if not self.quiet:
            print(message, file=sys.stderr, flush=True)
