"""bild: Big Little Decoder, speculative decoding and Decoding-UNO for transformers models."""
from .generator import BiLDGenerator, generate
from .stats import GenerationStats, expected_speedup

__all__ = ["BiLDGenerator", "generate", "GenerationStats", "expected_speedup"]
__version__ = "0.1.0"
