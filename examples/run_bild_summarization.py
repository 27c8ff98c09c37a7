#!/usr/bin/env python
"""Evaluate BiLD (or a baseline) on a summarization task and report ROUGE and generation latency.

    python examples/run_bild_summarization.py --config configs/xsum.yaml \
        --small <path or hub id> --large <path or hub id> --mode large

Modes: large (baseline), small, bild, exact (speculative decoding), assisted (transformers).
Several GPUs: ``accelerate launch examples/run_bild_summarization.py ...`` shards the data.
See docs/evaluation.md; all logic lives in bild.evaluation.runner.
"""

from bild.evaluation.runner import main as _main


def main(argv=None):
    """Parse ``argv`` (default: sys.argv[1:]) and run; returns the results dict."""
    return _main(argv, task="summarization")


if __name__ == "__main__":
    main()
