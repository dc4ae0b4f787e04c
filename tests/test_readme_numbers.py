"""README tables of bench results are the committed results' tables (bench/check_readme.py)."""
from __future__ import annotations

import shutil

from conftest import REPO, sample_module

check = sample_module("bench/check_readme.py", "bench_check_readme")


def test_readme_tables_match_the_committed_bench_results():
    assert check.stale_tables() == []


def test_a_stale_number_is_caught(tmp_path):
    for doc in check.DOCS:
        (tmp_path / doc).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / doc, tmp_path / doc)
    readme = tmp_path / "README.md"
    text = readme.read_text()
    assert "| 27.13 |" in text
    readme.write_text(text.replace("| 27.13 |", "| 33.6 |", 1))  # the older MiniLM run's latency
    problems = check.stale_tables(tmp_path)
    assert len(problems) == 1 and "minilm_int8" in problems[0]
