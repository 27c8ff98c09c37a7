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
"""
import sys as _sys

import transformers as _transformers

from ._compat import check_transformers as _check_transformers

_check_transformers(_transformers.__version__)  # outside the tested range: ImportError (older) or a warning

from . import online_costs  # noqa: E402
from .analysis import cost_model, theory  # noqa: E402
from .feature_draft import FeatureDraft  # noqa: E402
from .generator import BiLDGenerator, generate  # noqa: E402
from .pairs import alignment, controlled, smollm2  # noqa: E402
from .policies import (AdaptivePolicy, DraftCosts, DraftPolicy, HeuristicPolicy, LookupPolicy, RowwisePolicy,  # noqa: E402
                       ThresholdPolicy)
from .stats import GenerationStats, expected_speedup  # noqa: E402
from .drafts import load_draft  # noqa: E402
from .vocabulary import draft_vocabulary, prune_draft_vocabulary  # noqa: E402

# names of 0.12 that moved above their module (bild.families runs a ModelAdapter; bild.drafts loads feature drafts
# too), set back on it so that `bild.adapters.check_model`, `bild.vocabulary.load_draft` etc. work without a cycle
from . import adapters as _adapters, families as _families, vocabulary as _vocabulary  # noqa: E402

for _name in ("check_model", "rollback_is_exact", "rollback_problem", "working_release", "RECURRENT_EXACT_FROM",
              "ROLLBACK_OPS", "_REFUSED_TYPES", "_CHECKED_ENCODER_INPUTS"):
    setattr(_adapters, _name, getattr(_families, _name))
_vocabulary.load_draft = load_draft  # moved to bild.drafts (it knows feature drafts too), above vocabulary

# module paths of version 0.2 (`bild.pair`, `bild.cost_model`, ...) keep working
for _old, _mod in (("pair", smollm2), ("alignment", alignment), ("controlled", controlled),
                   ("cost_model", cost_model), ("theory", theory)):
    _sys.modules[f"{__name__}.{_old}"] = _mod
    globals()[_old] = _mod

__all__ = ["BiLDGenerator", "generate", "GenerationStats", "expected_speedup", "theory", "DraftPolicy",
           "AdaptivePolicy", "LookupPolicy", "RowwisePolicy", "ThresholdPolicy", "HeuristicPolicy", "DraftCosts",
           "prune_draft_vocabulary", "load_draft", "draft_vocabulary", "FeatureDraft"]
__version__ = "0.12.0"
