"""Student architecture search (the `search` pass): DisWOT training-free scoring with an
evolutionary search for CNNs, AutoDistil weight-sharing supernets for Transformer encoders.
Every searcher returns a `SearchOutcome` (outcome.py) that the pass reports and hands on.

    search_pass    the pass: constraints from the budgets, the family's searcher, outputs, report
    searchers      model family -> searcher ("module:function", imported when used)
    config         SearchConfig: the pass's options
    constraints    params / MACs / peak activation memory / latency limits, which one binds
    data           SearchData: the teacher's input spec and the run's calibration data
    cost           params, MACs and peak activation memory of any candidate graph
    latency_table  per-layer latency on the target's runner, cached by target and runtime version
    space          SearchSpace: genes and their choices as data; sampling, mutation, crossover
    families       the choices of the derived space and of the built-in families, as data
    derived_space  the space cut from the teacher's graph (prune's CNN channel analysis and shrink)
    family_space   the space of a built-in family; builders: its networks
    reinit         seeded random initialisation of any network
    features       where DisWOT reads a network: last feature map and logits
    diswot         the DisWOT scorer (semantic and relation similarity at initialisation)
    evolution      the evolutionary search
    cnn_search     the CNN searcher (DisWOT + evolution), the "cnn" entry of searchers
    pareto         the Pareto front of score against cost, and its plot
    report         the pass's report.md row and section
"""
from .outcome import Candidate, SearchOutcome

__all__ = ["Candidate", "SearchOutcome"]
