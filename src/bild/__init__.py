"""bild: Big Little Decoder, speculative decoding and Yin et al.'s Decoding-UNO/OPT for transformers models.

Layout: the engine is this package's top level; tooling lives in sub-packages that import it, never the
reverse: `bild.pairs` (model pairs), `bild.analysis` (cost model, theory), `bild.evaluation` (test-set runs),
and `bild.cli`. The engine's layers, highest first (a module imports only from layers below; docs/architecture.md;
checked by `lint-imports`, pyproject.toml):

    integration
    generator                                   entry points, output assembly
    options | checks | drafts                   option checks and policies; input checks; load_draft
    decoding | online_costs                     the draft-verify loop; learned costs
    proposers | scoring | acceptance            one round
    batch | policies | verification             row state; draft policies; verification rules
    families | feature_draft                    which models decode exactly; the feature draft
    adapters                                    ModelAdapter and the batch layouts
    probes | vocabulary                         capability probes; pruned vocabularies
    caches | timing | stats                     KV caches; time records; counters
    devices | _compat                           device helpers; the transformers range

`import bild` is light: it checks the installed transformers release (from its metadata) and imports
torch and transformers only when a public name is first used (PEP 562 `__getattr__`), so the `bild`
command line answers at once. Every name in `__all__` and every submodule (`bild.adapters`, ...) is
reachable as an attribute, as when they were imported eagerly.
"""

import importlib as _importlib
import importlib.util as _util
import sys as _sys

from ._compat import check_transformers as _check_transformers

__version__ = "0.12.0"


def _transformers_version() -> str:
    """The release `import transformers` gives, without importing it when it is not loaded yet."""
    if "transformers" in _sys.modules:
        return _sys.modules["transformers"].__version__
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("transformers")
    except PackageNotFoundError:  # a source tree on sys.path without metadata
        return _importlib.import_module("transformers").__version__


_check_transformers(_transformers_version())  # outside the tested range: ImportError (older) or a warning

# public name -> the module that defines it
_LAZY = {
    "BiLDGenerator": "generator",
    "generate": "generator",
    "GenerationStats": "stats",
    "expected_speedup": "stats",
    "DraftPolicy": "policies",
    "AdaptivePolicy": "policies",
    "LookupPolicy": "policies",
    "RowwisePolicy": "policies",
    "ThresholdPolicy": "policies",
    "HeuristicPolicy": "policies",
    "DraftCosts": "policies",
    "prune_draft_vocabulary": "vocabulary",
    "load_draft": "drafts",
    "draft_vocabulary": "vocabulary",
    "FeatureDraft": "feature_draft",
    "BiLDWarning": "bild_warnings",
    "BiLDRuntimeWarning": "bild_warnings",
}
# modules reachable under a second name: tooling sub-packages, and the module paths of version 0.2
# (`bild.pair`, `bild.cost_model`, ...), which keep working for `import bild.pair` too
_ALIASES = {
    "cost_model": "analysis.cost_model",
    "theory": "analysis.theory",
    "alignment": "pairs.alignment",
    "controlled": "pairs.controlled",
    "smollm2": "pairs.smollm2",
    "pair": "pairs.smollm2",
}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(_importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    elif name in _ALIASES:
        value = _importlib.import_module(f"{__name__}.{_ALIASES[name]}")
    elif not name.startswith("_") and _util.find_spec(f"{__name__}.{name}") is not None:
        value = _importlib.import_module(f"{__name__}.{name}")  # a submodule: bild.adapters, bild.decoding, ...
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY) | set(_ALIASES))


class _AliasFinder:
    """`import bild.pair` (an `_ALIASES` name) imports the module it names and registers it under both names.
    A meta path finder and loader by protocol (importlib.abc costs a noticeable part of `import bild`)."""

    def find_spec(self, fullname, path=None, target=None):
        head, _, tail = fullname.partition(".")
        if head == __name__ and tail in _ALIASES:
            return _util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        target = _importlib.import_module(f"{__name__}.{_ALIASES[module.__name__.partition('.')[2]]}")
        _sys.modules[module.__name__] = target  # the import statement returns what sys.modules holds


if not any(type(f).__name__ == "_AliasFinder" for f in _sys.meta_path):  # once, also when bild is re-imported
    _sys.meta_path.append(_AliasFinder())

__all__ = [
    "BiLDGenerator",
    "generate",
    "GenerationStats",
    "expected_speedup",
    "theory",
    "DraftPolicy",
    "AdaptivePolicy",
    "LookupPolicy",
    "RowwisePolicy",
    "ThresholdPolicy",
    "HeuristicPolicy",
    "DraftCosts",
    "prune_draft_vocabulary",
    "load_draft",
    "draft_vocabulary",
    "FeatureDraft",
    "BiLDWarning",
    "BiLDRuntimeWarning",
]
