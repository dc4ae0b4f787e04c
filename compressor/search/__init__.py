"""Student architecture search (the `search` pass): DisWOT training-free scoring with an
evolutionary search for CNNs, AutoDistil weight-sharing supernets for Transformer encoders.
Every searcher returns a `SearchOutcome` (outcome.py) that the pass reports and hands on."""
from .outcome import Candidate, SearchOutcome

__all__ = ["Candidate", "SearchOutcome"]
