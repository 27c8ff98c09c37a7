"""Tooling that builds model pairs: the offline SmolLM2 pair (`smollm2`), distillation of a draft model
towards a large one (`alignment`), and pairs of a chosen agreement and confidence (`controlled`)."""
