"""Check that the README tables of bench results are the committed results' own tables.

A markdown table in README.md or bench/README.md whose preceding paragraph names a bench
(`bench/NAME.py` or `bench/results/NAME.json`) must be, line for line, the table that
bench/results/NAME.json holds (`table_markdown` or `table`), i.e. from the latest committed run.
Exit 1 with the differences, 0 when every such table matches.

    python bench/check_readme.py
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ("README.md", "bench/README.md")
NAMES = re.compile(r"bench/(?:results/)?(\w+)\.(?:py|json)")
LOOKBACK = 12  # lines before a table in which its bench is named


def result_table(name: str) -> list[str] | None:
    path = ROOT / "bench" / "results" / f"{name}.json"
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    table = data.get("table_markdown") or data.get("table")
    return [line.strip() for line in table.strip().splitlines()] if isinstance(table, str) else None


def tables(lines: list[str]):
    """(first line index, table lines) of every markdown table."""
    i = 0
    while i < len(lines):
        if lines[i].startswith("|"):
            start = i
            while i < len(lines) and lines[i].startswith("|"):
                i += 1
            yield start, [line.strip() for line in lines[start:i]]
        i += 1


def stale_tables(root: Path = ROOT) -> list[str]:
    problems = []
    for doc in DOCS:
        lines = (root / doc).read_text().splitlines()
        for start, table in tables(lines):
            before = "\n".join(lines[max(0, start - LOOKBACK):start])
            paragraph = before.split("\n\n")[-1]
            named = [n for n in NAMES.findall(paragraph) if result_table(n) is not None]
            if not named:
                continue
            want = result_table(named[-1])
            if table != want:
                problems.append(f"{doc}:{start + 1}: the table after `bench/{named[-1]}` is not "
                                f"bench/results/{named[-1]}.json's table:\n  README: "
                                + "\n          ".join(table) + "\n  JSON:   " + "\n          ".join(want))
    return problems


def main() -> int:
    problems = stale_tables()
    for p in problems:
        print(p, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
