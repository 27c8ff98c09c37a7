"""Tooling that predicts and explains speed: the measured cost model (`cost_model`) and Yin et al.'s
theory of speculative decoding (`theory`)."""
