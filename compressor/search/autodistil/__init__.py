"""AutoDistil for Transformer encoders (Xu et al., 2022): K compact sub-spaces of a BERT-family
teacher, one weight-sharing supernet per sub-space trained task-agnostically with MiniLM's
self-attention relation distillation, subnets searched under the constraints without retraining,
and the chosen one extracted as a standalone Hugging Face module.

    space     the sub-spaces (tiny / small / base) as data; SubnetSpec; the sandwich sampling
    supernet  Supernet: the teacher's weights shared by every subnet (sliced, functional_call)
    train     train_supernet: the task-agnostic distillation of a sub-space's supernet
    select    search_subnets: fidelity on held-out text, costs, constraints; FidelityScorer
    cost      subnet_cost: params, MACs at 128 tokens, peak activations (prune.transformer_cost)
    extract   extract_subnet: a real BertModel with a smaller config; save_student: an HF folder
    latency   onnx_latency_ms: a live measure for a latency constraint
    searcher  search(teacher, data, constraints, cfg, progress) -> SearchOutcome: the pass's entry
"""
from .config import AutoDistilConfig
from .cost import subnet_cost
from .extract import extract_subnet, save_student
from .searcher import search
from .select import FidelityScorer, search_subnets
from .space import SUBSPACES, SubnetSpec, SubSpace, candidates, full_spec
from .supernet import Supernet, teacher_dims
from .train import train_supernet

__all__ = ["AutoDistilConfig", "FidelityScorer", "SUBSPACES", "SubSpace", "SubnetSpec", "Supernet", "candidates",
           "extract_subnet", "full_spec", "save_student", "search", "search_subnets", "subnet_cost", "teacher_dims",
           "train_supernet"]
