#!/usr/bin/env python
"""Sweep BiLD's fallback and rollback thresholds against the large-model baseline.

    python examples/sweep_thresholds.py --config configs/wmt14_de_en.yaml \
        --small <path or hub id> --large <path or hub id> \
        --fallback 0.3,0.5,0.7,0.9 --rollback 1,2,3,5,inf --limit 200

Writes one run folder per point plus sweep.csv and sweep.png (speedup vs. quality, Pareto front)
under --output_dir (default runs/<name>/sweep). Add --resume to continue an interrupted sweep.
See docs/evaluation.md; all logic lives in bild.evaluation.sweep.
"""

from bild.evaluation.sweep import main as _main


def main(argv=None):
    """Parse ``argv`` (default: sys.argv[1:]) and run the sweep; returns the CSV rows."""
    return _main(argv)


if __name__ == "__main__":
    main()
