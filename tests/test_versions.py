"""The transformers range: declared once, checked at import, and no deprecation warning of bild's own making
on the installed release (transformers 5.24 renamed every forward's `past_key_values` to `cache`)."""

import sys
import warnings
from pathlib import Path

import pytest
import torch
import transformers
from models import make_inputs, make_pair

import bild
from bild import _compat
from bild.analysis.cost_model import measure_costs

REPO = Path(__file__).resolve().parents[1]


def test_pyproject_declares_the_range_bild_checks():
    import tomllib

    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert _compat.TRANSFORMERS_REQUIREMENT in deps
    lo, hi = _compat.TRANSFORMERS_REQUIREMENT.split(">=")[1].split(",<")
    assert _compat.TRANSFORMERS_OLDEST.startswith(lo + ".")
    newest = _compat._release(_compat.TRANSFORMERS_NEWEST)
    assert hi == f"{newest[0]}.{newest[1] + 1}"  # the bound admits the newest tested release's patches only
    ci = (REPO / ".ci" / "run").read_text()
    assert "TRANSFORMERS_OLDEST" in ci and '"transformers==$OLDEST"' in ci  # CI runs the oldest end too


def test_installed_release_is_in_range():
    assert _compat.check_transformers(transformers.__version__) is None, transformers.__version__


@pytest.mark.parametrize("version", ["5.17.0", "5.20.2", "5.24.0", "5.25.0", "5.25.2", "5.25.0.dev0"])
def test_tested_releases_pass(version):
    assert _compat.check_transformers(version) is None


def test_older_release_is_an_error_naming_both_versions(monkeypatch):
    monkeypatch.delenv(_compat.ALLOW_ENV, raising=False)
    with pytest.raises(ImportError, match=r"transformers 5\.16\.1 is older.*5\.17\.0 to 5\.25\.x"):
        _compat.check_transformers("5.16.1")
    monkeypatch.setenv(_compat.ALLOW_ENV, "1")
    with pytest.warns(RuntimeWarning, match="5.16.1"):
        _compat.check_transformers("5.16.1")


def test_newer_release_warns_naming_both_versions(monkeypatch):
    monkeypatch.delenv(_compat.ALLOW_ENV, raising=False)
    with pytest.warns(RuntimeWarning, match=r"transformers 5\.26\.0 is newer.*5\.17\.0 to 5\.25\.x"):
        assert _compat.check_transformers("5.26.0")


def test_import_checks_the_installed_release(monkeypatch):
    monkeypatch.setattr(sys.modules["transformers"], "__version__", "4.57.1")  # the module bild will import
    monkeypatch.delenv(_compat.ALLOW_ENV, raising=False)
    saved = {k: v for k, v in sys.modules.items() if k == "bild" or k.startswith("bild.")}
    for k in saved:
        del sys.modules[k]
    try:
        with pytest.raises(ImportError, match="transformers 4.57.1 is older"):
            import bild  # noqa: F401
    finally:
        sys.modules.update(saved)


@pytest.fixture
def no_deprecations():
    """Deprecation warnings become errors (transformers' renamed keyword warns with a FutureWarning)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        warnings.simplefilter("error", DeprecationWarning)
        yield


@pytest.mark.parametrize("family", ["llama", "t5"])
def test_no_deprecation_warning_from_any_entry_point(family, no_deprecations):
    small, large = make_pair(family)
    ids, mask = make_inputs(family, 2, seed=3)
    kw = dict(attention_mask=mask, max_new_tokens=8, do_sample=False)
    ref = large.generate(ids, **kw)
    gen = bild.BiLDGenerator(small, large, verification="exact", fallback_threshold=0.0, max_small_steps=3)
    assert torch.equal(gen.generate(ids, **kw), ref)
    assert torch.equal(
        large.generate(
            ids,
            custom_generate=bild.generate,
            small_model=small,
            verification="exact",
            fallback_threshold=0.0,
            max_small_steps=3,
            **kw,
        ),
        ref,
    )
    assert torch.equal(
        large.generate(
            ids,
            custom_generate=str(REPO),
            trust_remote_code=True,
            small_model=small,
            verification="exact",
            fallback_threshold=0.0,
            max_small_steps=3,
            **kw,
        ),
        ref,
    )
    measure_costs(
        small,
        large,
        prompt_len=4,
        new_tokens=4,
        batch_size=1,
        repeats=1,
        warmup=0,
        forward_lens=[1, 2],
        prefill_lens=[1],
    )
