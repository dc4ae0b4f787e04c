"""compressor.profile.latency.measure: how variants take turns, and what it reports."""
from __future__ import annotations

from compressor.profile.latency import UNTIMED_PER_BLOCK, measure


def _recording(log: list[str], names: str):
    return {n: (lambda n=n: log.append(n)) for n in names}


def test_single_thread_variants_are_interleaved_one_call_each():
    log: list[str] = []
    result = measure(_recording(log, "ab"), runs=5, warmup=2)
    assert log[4:] == list("ab") * 5  # after 2 warmup calls each: a b a b ...
    assert {k: v["runs"] for k, v in result.items()} == {"a": 5, "b": 5}
    assert all(0 <= v["median_ms"] <= v["p90_ms"] for v in result.values())


def test_multi_thread_variants_are_timed_in_blocks_after_untimed_calls():
    # Interleaving one call each would let one runtime's spinning worker threads slow the next.
    log: list[str] = []
    result = measure(_recording(log, "ab"), runs=15, warmup=1, block=10)
    per_block = UNTIMED_PER_BLOCK + 10
    assert log[2:] == (["a"] * per_block + ["b"] * per_block) * 2  # ceil(15 / 10) rounds
    assert {k: v["runs"] for k, v in result.items()} == {"a": 20, "b": 20}  # untimed calls not counted
