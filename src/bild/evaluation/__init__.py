"""Evaluation harness for BiLD: reproduce the paper's four tasks and tune the two thresholds.

The command-line scripts in ``examples/`` are thin wrappers over this package:

* :mod:`bild.evaluation.config`  - the run configuration (dataclass), YAML files, command-line flags, validation
* :mod:`bild.evaluation.data`    - loading examples from the Hub (``datasets``) or a local JSONL file
* :mod:`bild.evaluation.metrics` - BLEU (sacrebleu) and ROUGE (rouge_score), engine-statistic aggregation
* :mod:`bild.evaluation.timing`  - generation-only timing with device synchronisation, percentiles
* :mod:`bild.evaluation.modeling`- loading the model pair and running one batch in each ``--mode``
* :mod:`bild.evaluation.runner`  - one evaluation run: run folder, resume, predictions.jsonl, results.json
* :mod:`bild.evaluation.sweep`   - threshold sweeps, Pareto front, CSV and plot

Heavy libraries (torch, transformers, datasets) are imported lazily so that bad input is
reported quickly, before any model is loaded.
"""

from .config import MODES, ConfigError, EvalConfig

__all__ = ["ConfigError", "EvalConfig", "MODES"]
