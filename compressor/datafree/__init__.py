"""Data-free calibration: inputs synthesised from what the model itself knows, for when `--calib`
is not given.

Why a package of its own, and not a source in `calibration.py`: a calibration recipe turns files
into tensors and knows nothing of the model, while synthesis needs the model (its graph, its
BatchNorm statistics, its tokenizer), an optimisation loop with a progress bar, and the run
directory (its batches are cached there so a killed run resumes). It produces the same
`CalibrationData` a recipe does, so every pass reads it unchanged; `data_source` in its extras
tells verification and the report that no real data was used.

One method per file, tried in the order of `synthesis.METHODS` (the first that applies wins):

- `bn_statistics`: models with inference BatchNorm (CNNs): ZeroQ-style inputs optimised until every
  BatchNorm's batch mean and variance match its running statistics, with a small smoothness prior
  and, for classifiers, class-conditional targets so every class is represented;
- `vocabulary`: Hugging Face encoders: sentences of whole-word tokens sampled from the model's
  own tokenizer vocabulary (no special tokens), at realistic sentence lengths;
- `input_range`: any other model: uniform samples of its float inputs in [0, 1] (the range the
  loader's example inputs use), ones for integer inputs.
"""
from .synthesis import METHODS, DataFreeConfig, choose_method, synthesize  # noqa: F401
from .bn_statistics import bn_mismatch  # noqa: F401
from .source import RANDOM, REAL, SYNTHETIC, data_source, data_source_words  # noqa: F401
