#!/usr/bin/env python
"""Evaluate BiLD (or a baseline) on a translation task and report BLEU and generation latency.

    python examples/run_bild_translation.py --config configs/iwslt2017_de_en.yaml \
        --small <path or hub id> --large <path or hub id> --mode bild \
        --fallback_threshold 0.6 --rollback_threshold 3

Modes: large (baseline), small, bild, exact (speculative decoding), assisted (transformers).
Several GPUs: ``accelerate launch examples/run_bild_translation.py ...`` shards the data.
See docs/evaluation.md; all logic lives in bild.evaluation.runner.
"""

from bild.evaluation.runner import main as _main


def main(argv=None):
    """Parse ``argv`` (default: sys.argv[1:]) and run; returns the results dict."""
    return _main(argv, task="translation")


if __name__ == "__main__":
    main()
