"""Tiny seeded model pairs for every supported family (no downloads)."""

from __future__ import annotations

import re

import torch
from transformers import (
    BartConfig,
    BartForConditionalGeneration,
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MarianConfig,
    MarianMTModel,
    OPTConfig,
    OPTForCausalLM,
    T5Config,
    T5ForConditionalGeneration,
)

V = 96
SPECIAL = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)


def _config(family: str, layers: int):
    if family == "gpt2":
        return GPT2LMHeadModel, GPT2Config(
            vocab_size=V, n_embd=32, n_layer=layers, n_head=4, n_positions=128, initializer_range=0.2, **SPECIAL
        )
    if family == "llama":
        return LlamaForCausalLM, LlamaConfig(
            vocab_size=V,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=128,
            initializer_range=0.2,
            **SPECIAL,
        )
    if family == "gpt_neox":
        return GPTNeoXForCausalLM, GPTNeoXConfig(
            vocab_size=V,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=layers,
            num_attention_heads=4,
            max_position_embeddings=128,
            initializer_range=0.2,
            **SPECIAL,
        )
    if family == "opt":
        return OPTForCausalLM, OPTConfig(
            vocab_size=V,
            hidden_size=32,
            ffn_dim=64,
            num_hidden_layers=layers,
            num_attention_heads=4,
            word_embed_proj_dim=32,
            max_position_embeddings=128,
            init_std=0.2,
            **SPECIAL,
        )
    if family == "t5":
        return T5ForConditionalGeneration, T5Config(
            vocab_size=V,
            d_model=32,
            d_kv=8,
            d_ff=64,
            num_layers=layers,
            num_decoder_layers=layers,
            num_heads=4,
            decoder_start_token_id=0,
            initializer_factor=4.0,
            pad_token_id=0,
            eos_token_id=2,
            tie_word_embeddings=False,
        )
    if family == "bart":
        return BartForConditionalGeneration, BartConfig(
            vocab_size=V,
            d_model=32,
            encoder_layers=layers,
            decoder_layers=layers,
            encoder_attention_heads=4,
            decoder_attention_heads=4,
            encoder_ffn_dim=64,
            decoder_ffn_dim=64,
            max_position_embeddings=128,
            init_std=0.2,
            decoder_start_token_id=2,
            forced_eos_token_id=None,
            **SPECIAL,
        )
    if family == "marian":
        return MarianMTModel, MarianConfig(
            vocab_size=V,
            d_model=32,
            encoder_layers=layers,
            decoder_layers=layers,
            encoder_attention_heads=4,
            decoder_attention_heads=4,
            encoder_ffn_dim=64,
            decoder_ffn_dim=64,
            max_position_embeddings=128,
            init_std=0.2,
            decoder_start_token_id=0,
            decoder_vocab_size=V,
            **SPECIAL,
        )
    raise ValueError(family)


DECODER_ONLY = ("gpt2", "llama", "gpt_neox", "opt")
ENCODER_DECODER = ("t5", "bart", "marian")
FAMILIES = DECODER_ONLY + ENCODER_DECODER
SHARPNESS = dict(gpt2=2.0, llama=2.0, gpt_neox=2.0, opt=2.0, t5=2.0, bart=2.0, marian=2.0)
DEPTH_SCALE = dict(gpt2=0.7, llama=0.7, gpt_neox=0.7, opt=0.7, t5=0.7, bart=0.5, marian=0.5)


def make_pair(
    family: str, seed: int = 0, large_layers: int = 3, sharpness: float | None = None, depth_scale: float | None = None
):
    """A 3-layer large model and a 1-layer small one that copies the large model's embeddings, first
    layer and head, so the two agree on some tokens and not on others."""
    cls, cfg = _config(family, large_layers)
    torch.manual_seed(seed)
    large = cls(cfg).eval()
    with torch.no_grad():  # peaked distributions, so that drafts are confident and often right
        head = large.get_output_embeddings().weight
        head.mul_((sharpness or SHARPNESS[family]) / head.std())
        for name, param in large.named_parameters():  # weaker later layers: the 1-layer copy agrees more
            layer = re.search(r"\.(\d+)\.", name)
            if layer and int(layer.group(1)) >= 1 and param.dim() >= 2:
                param.mul_(depth_scale or DEPTH_SCALE[family])
    _, small_cfg = _config(family, 1)
    small = cls(small_cfg).eval()
    small.load_state_dict(large.state_dict(), strict=False)
    for m in (small, large):
        m.generation_config.max_length = None
        m.generation_config.forced_eos_token_id = None
    return small, large


def make_inputs(family: str, batch: int, seed: int = 0, length: int = 7):
    """Prompts of different lengths, left-padded (decoder-only) or right-padded (encoder input)."""
    g = torch.Generator().manual_seed(seed)
    lengths = [length - 2 * (i % 3) for i in range(batch)]
    ids = torch.zeros(batch, length, dtype=torch.long)
    mask = torch.zeros(batch, length, dtype=torch.long)
    for i, n in enumerate(lengths):
        toks = torch.randint(3, V, (n,), generator=g)
        if family in ENCODER_DECODER:
            ids[i, :n], mask[i, :n] = toks, 1
            ids[i, n - 1] = 2  # encoder inputs end with eos
        else:
            ids[i, length - n :], mask[i, length - n :] = toks, 1
    return ids, mask
