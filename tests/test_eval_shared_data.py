"""The project's own data loaders read the shared evaluation files (skipped when they are absent)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bild.evaluation.config import resolve_config
from bild.evaluation.data import load_examples, read_jsonl

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"

# folder -> (config file, script task, examples per split)
EXPECTED = {
    "iwslt2017_de_en": ("iwslt2017_de_en", "translation", 400),
    "wmt14_de_en": ("wmt14_de_en", "translation", 400),
    "xsum": ("xsum", "summarization", 200),
}

pytestmark = pytest.mark.skipif(not SHARED.is_dir(), reason=f"shared evaluation data not found at {SHARED}")


@pytest.mark.parametrize("folder", sorted(EXPECTED))
@pytest.mark.parametrize("split", ["dev", "test"])
def test_shared_file_loads_through_the_task_config(folder, split):
    config, task, count = EXPECTED[folder]
    path = SHARED / folder / f"{split}.jsonl"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    assert set(read_jsonl(path, limit=1)[0]) >= {"source", "target"}
    cfg, _ = resolve_config(["--config", str(ROOT / "configs" / f"{config}.yaml"), "--test_file", str(path)], task)
    examples = load_examples(cfg)
    assert len(examples) == count
    assert [e.id for e in examples] == list(range(count))
    assert all(e.source.strip() and e.target.strip() for e in examples)
    limited, _ = resolve_config(
        ["--config", str(ROOT / "configs" / f"{config}.yaml"), "--test_file", str(path), "--limit", "7"], task
    )
    assert load_examples(limited) == examples[:7]
