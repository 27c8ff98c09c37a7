"""bild: Big Little Decoder, speculative decoding and Yin et al.'s Decoding-UNO/OPT for transformers models."""
from . import theory
from .generator import BiLDGenerator, generate
from .policies import AdaptivePolicy, DraftCosts, DraftPolicy, HeuristicPolicy, ThresholdPolicy
from .stats import GenerationStats, expected_speedup

__all__ = ["BiLDGenerator", "generate", "GenerationStats", "expected_speedup", "theory", "DraftPolicy",
           "AdaptivePolicy", "ThresholdPolicy", "HeuristicPolicy", "DraftCosts"]
__version__ = "0.2.0"
