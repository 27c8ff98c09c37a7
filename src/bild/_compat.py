"""The transformers releases bild is tested against, checked once at import.

`.ci/run` tests both ends of the range: the full suite on the newest release it allows, the engine,
families and custom_generate tests on the oldest (the release on the project's accelerator machine). The
upper bound keeps pip from installing a release no CI run has seen; `.ci/run` also tries the newest
release on PyPI, outside the range, and prints whether it works, so the bound moves once one has passed.
"""

from __future__ import annotations

import os
import warnings

TRANSFORMERS_OLDEST = "5.17.0"  # oldest release CI runs (.ci/run)
TRANSFORMERS_NEWEST = "5.25.0"  # newest release CI runs; pyproject's bound admits its patch releases only
TRANSFORMERS_REQUIREMENT = "transformers>=5.17,<5.26"  # pyproject.toml (tests/test_versions.py keeps them equal)
ALLOW_ENV = "BILD_ALLOW_UNTESTED_TRANSFORMERS"


def _release(version: str) -> tuple[int, ...]:
    """'5.24.0.dev0' -> (5, 24, 0): the numeric release, pre-release tags dropped."""
    out = []
    for part in version.split("+")[0].split("."):
        digits = "".join(c for c in part if c.isdigit()) if part[:1].isdigit() else ""
        if not digits:
            break
        out.append(int(digits))
        if not part.isdigit():
            break
    return tuple(out)


def check_transformers(version: str) -> str | None:
    """None if `version` is in the tested range; else why not. Older releases raise at import (the engine
    relies on cache behaviour they may not have); newer ones warn (they usually work, and no CI run saw them)."""
    v, lo, hi = _release(version), _release(TRANSFORMERS_OLDEST), _release(TRANSFORMERS_NEWEST)
    supported = f"bild is tested with transformers {TRANSFORMERS_OLDEST} to {'.'.join(map(str, hi[:2]))}.x"
    if v < lo:
        msg = (
            f"transformers {version} is older than bild supports: {supported} "
            f"(`pip install '{TRANSFORMERS_REQUIREMENT}'`)"
        )
        if os.environ.get(ALLOW_ENV):
            warnings.warn(msg + f"; continuing because {ALLOW_ENV} is set", RuntimeWarning, stacklevel=3)
            return msg
        raise ImportError(msg + f". Set {ALLOW_ENV}=1 to import it anyway.")
    if v[:2] > hi[:2]:
        msg = (
            f"transformers {version} is newer than any release bild was tested with: {supported} "
            f"(`pip install '{TRANSFORMERS_REQUIREMENT}'`). Exact mode's output is checked against "
            "large.generate only on tested releases."
        )
        if not os.environ.get(ALLOW_ENV):
            warnings.warn(msg, RuntimeWarning, stacklevel=3)
        return msg
    return None
