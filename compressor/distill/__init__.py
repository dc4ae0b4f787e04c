"""Knowledge distillation, shared by every pass that trains a student against the teacher:
quantization-aware distillation (quantize), structured pruning, the distill pass, student search.

    config   DistillConfig: the options every distilling pass accepts (a pass's Config extends it)
    losses   temperature-scaled logit KL, normalised MSE, feature and sample-relation losses,
             MiniLM's self-attention relations, class-activation (DisWOT semantic) similarity
    fidelity how close a student is to the teacher on a validation slice (the selection measure)
    taps     feature taps: on a captured graph (the input of the last weighted layer) or by hooks
    split    the training data: calibration samples less a validation slice
    loop     the training loop: epochs, early stopping on the validation score, progress, history
"""
from .config import DistillConfig
from .fidelity import Fidelity, batched_outputs, best_of, divergence, fidelity_scorer, held_out_scorer, output_error, prefer
from .losses import (class_activation_maps, class_similarity, feature_loss, logit_kl, matched_layer_loss, normalised_mse,
                     prediction_loss, relation_loss, self_attention_relation_loss, semantic_loss)
from .loop import train
from .split import TrainingData, split_validation, training_split
from .taps import HookTaps, Tap, tap_last_weighted_input, tapped_features

__all__ = ["DistillConfig", "Fidelity", "HookTaps", "Tap", "TrainingData", "batched_outputs", "best_of",
           "class_activation_maps", "class_similarity", "divergence", "feature_loss", "fidelity_scorer",
           "held_out_scorer", "logit_kl", "matched_layer_loss", "normalised_mse", "output_error", "prediction_loss",
           "prefer", "relation_loss", "self_attention_relation_loss", "semantic_loss", "split_validation",
           "tap_last_weighted_input", "tapped_features", "train", "training_split"]
