"""Controlled-agreement model pairs for tests and benchmarks.

A *controlled pair* is a randomly initialised "large" model and a "small" model made of
its first layer(s) (sharing embeddings, final norm and LM head with the large model).
Scaling the output projections of the large model's remaining layers by ``alpha`` sets how
often the two models agree: with ``alpha = 0`` the extra layers add nothing to the residual
stream and the small model *is* the large one; as ``alpha`` grows the large model drifts
away from its first-layer prefix.  :func:`build_controlled_pair` bisects ``alpha`` until the
*greedy agreement* measured on a few fixed random prompts matches a requested value.

Greedy agreement (:func:`measure_agreement`) is the fraction of generated positions where
the small model's argmax equals the large model's argmax, both conditioned on the large
model's own greedy prefix.  With greedy decoding this is exactly the per-token acceptance
probability of speculative decoding, i.e. the ``alpha`` of the speculative-decoding papers
(``bild.expected_speedup``).

Two families are supported:

``"llama"``
    ``LlamaForCausalLM``.  Scaled: ``self_attn.o_proj`` and ``mlp.down_proj`` of layers
    ``small_layers .. layers-1``.
``"t5"``
    ``T5ForConditionalGeneration``.  The small model keeps the large model's encoder (shared
    module by default, or a copy with ``share_encoder=False``) and the first decoder
    block(s).  Scaled: the self-attention ``o``, cross-attention ``o`` and feed-forward ``wo``
    of decoder blocks ``small_layers .. layers-1``.  The encoder has ``encoder_layers``
    (default: ``layers``) blocks; transformers' T5 needs ``num_decoder_layers <= num_layers``.

``"qwen3_next"``
    ``Qwen3NextForCausalLM`` (transformers >= 5.25 to decode it with bild), a hybrid: gated-delta-rule linear
    attention and full attention, layer types ``linear, full`` then ``linear, linear, full`` repeated (Qwen3-Next's
    3 : 1), a dense MLP (no experts). The small model keeps the first ``small_layers`` (at least 2: one of each
    kind). Scaled: ``linear_attn.out_proj`` / ``self_attn.o_proj`` and ``mlp.down_proj`` of the later layers.

Both models get ``generation_config.eos_token_id = None`` so that every method generates
exactly ``max_new_tokens`` tokens (random models emit EOS at random), and
``pad_token_id = 0``.  Prompts from :func:`make_prompts` avoid the special ids ``0..2``.

Random models tend to produce degenerate, repetitive greedy text (with the default init
scale ``0.02`` a 16-layer Llama repeats one token forever), which makes any agreement
measurement meaningless: the whole continuation agrees or disagrees at once.  The Llama
family therefore initialises with ``init_std=0.1`` by default, which gives greedy
continuations with almost no repeated tokens; the calibration also reports the fraction
of distinct tokens among the large model's greedy outputs (``info.distinct_fraction``).
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

__all__ = [
    "PairInfo",
    "build_controlled_pair",
    "make_prompts",
    "measure_agreement",
    "agreement_on",
    "set_alpha",
    "FAMILIES",
]

FAMILIES = ("llama", "t5", "qwen3_next")

# Token ids below this are reserved (pad / bos / eos in both families); prompts avoid them.
_FIRST_ORDINARY_ID = 3


@dataclass
class PairInfo:
    """What :func:`build_controlled_pair` built and measured."""

    family: str
    alpha: float
    target_agreement: float | None
    agreement: float  # measured on the calibration prompts at the final alpha
    distinct_fraction: float  # distinct tokens / generated tokens in large greedy outputs
    converged: bool  # |agreement - target| <= tolerance (True when no target was given)
    tolerance: float
    hidden: int
    layers: int
    small_layers: int
    vocab: int
    encoder_layers: int | None
    init_std: float
    seed: int
    device: str
    dtype: str
    calib_prompts: int
    calib_prompt_len: int
    calib_new_tokens: int
    positions: int  # number of positions the agreement was measured on
    logit_scale: float = 1.0  # factor applied to the shared LM head (see ``confidence``)
    small_confidence: float = 0.0  # mean max-probability of the small model on those positions
    history: list[tuple[float, float]] = field(default_factory=list)  # (alpha, agreement)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------------------
# construction
# --------------------------------------------------------------------------------------


def _share_prefix(small, large, small_layers: int):
    """The small decoder-only model becomes the large one's prefix: it shares the embeddings, the first
    `small_layers` layers, the final norm, the rotary embedding and the LM head (modules, not copies)."""
    small.model.embed_tokens = large.model.embed_tokens
    small.model.layers = torch.nn.ModuleList(list(large.model.layers[:small_layers]))
    small.model.norm = large.model.norm
    small.model.rotary_emb = large.model.rotary_emb
    small.lm_head = large.lm_head
    return small


def _llama_pair(hidden, layers, small_layers, vocab, heads, intermediate, init_std, max_positions):
    from transformers import LlamaConfig, LlamaForCausalLM

    def cfg(n_layers):
        return LlamaConfig(
            vocab_size=vocab,
            hidden_size=hidden,
            intermediate_size=intermediate,
            num_hidden_layers=n_layers,
            num_attention_heads=heads,
            num_key_value_heads=heads,
            max_position_embeddings=max_positions,
            initializer_range=init_std,
            tie_word_embeddings=False,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=0,
        )

    large = LlamaForCausalLM(cfg(layers))
    small = _share_prefix(LlamaForCausalLM(cfg(small_layers)), large, small_layers)
    scaled = []
    for layer in large.model.layers[small_layers:]:
        scaled += [layer.self_attn.o_proj, layer.mlp.down_proj]
    return small, large, scaled


def qwen3_next_layer_types(layers: int) -> list[str]:
    """Qwen3-Next's pattern for a controlled pair: linear, full, then (linear, linear, full) repeated."""
    tail = ["linear_attention", "linear_attention", "full_attention"] * layers
    return (["linear_attention", "full_attention"] + tail)[:layers]


def _qwen3_next_pair(hidden, layers, small_layers, vocab, heads, intermediate, init_std, max_positions):
    from transformers import Qwen3NextConfig, Qwen3NextForCausalLM

    if small_layers < 2:
        raise ValueError("the qwen3_next family needs small_layers >= 2 (a linear and a full attention layer)")
    head_dim = hidden // heads

    def cfg(n_layers):
        return Qwen3NextConfig(
            vocab_size=vocab,
            hidden_size=hidden,
            intermediate_size=intermediate,
            num_hidden_layers=n_layers,
            num_attention_heads=heads,
            num_key_value_heads=heads,
            head_dim=head_dim,
            linear_num_key_heads=heads,
            linear_num_value_heads=heads,
            linear_key_head_dim=head_dim,
            linear_value_head_dim=head_dim,
            layer_types=qwen3_next_layer_types(layers)[:n_layers],
            num_experts=0,
            max_position_embeddings=max_positions,
            initializer_range=init_std,
            tie_word_embeddings=False,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=0,
        )

    large = Qwen3NextForCausalLM(cfg(layers))
    small = _share_prefix(Qwen3NextForCausalLM(cfg(small_layers)), large, small_layers)
    scaled = []
    for layer in large.model.layers[small_layers:]:
        mixer = layer.linear_attn.out_proj if hasattr(layer, "linear_attn") else layer.self_attn.o_proj
        scaled += [mixer, layer.mlp.down_proj]
    return small, large, scaled


def _t5_pair(
    hidden,
    layers,
    small_layers,
    vocab,
    heads,
    intermediate,
    init_std,
    encoder_layers,
    share_encoder,
    cross_attention_scale,
):
    from transformers import T5Config, T5ForConditionalGeneration

    def cfg(n_dec):
        return T5Config(
            vocab_size=vocab,
            d_model=hidden,
            d_kv=hidden // heads,
            d_ff=intermediate,
            num_layers=encoder_layers,
            num_decoder_layers=n_dec,
            num_heads=heads,
            dropout_rate=0.0,
            initializer_factor=init_std,
            feed_forward_proj="relu",
            tie_word_embeddings=False,
            pad_token_id=0,
            eos_token_id=1,
            decoder_start_token_id=0,
        )

    large = T5ForConditionalGeneration(cfg(layers))
    # transformers 5 always ties T5's LM head to the input embedding (``tie_word_embeddings`` is
    # forced to True).  With a random model that makes "predict the current token" the greedy
    # fixed point (the residual stream carries the token's own embedding), so every greedy
    # continuation is one token repeated.  Give the pair an independent random head instead.
    head = torch.nn.Linear(hidden, vocab, bias=False)
    torch.nn.init.normal_(head.weight, mean=0.0, std=init_std)
    large.lm_head = head
    # A random decoder's state is dominated by the (position-independent) cross-attention
    # read-out, which again makes greedy text collapse into one repeated token; damping the
    # cross-attention output projections makes the continuation depend on the decoder's own
    # tokens (distinct-token fraction ~0.4 -> ~0.9 at the agreements of interest).
    with torch.no_grad():
        for block in large.decoder.block:
            block.layer[1].EncDecAttention.o.weight.mul_(cross_attention_scale)
    small = T5ForConditionalGeneration(cfg(small_layers))
    small.shared = large.shared
    small.encoder = large.encoder if share_encoder else copy.deepcopy(large.encoder)
    small.encoder.embed_tokens = large.shared if share_encoder else small.encoder.embed_tokens
    small.decoder.embed_tokens = large.shared
    small.decoder.block = torch.nn.ModuleList(list(large.decoder.block[:small_layers]))
    small.decoder.final_layer_norm = large.decoder.final_layer_norm
    small.lm_head = large.lm_head
    scaled = []
    for block in large.decoder.block[small_layers:]:
        scaled += [block.layer[0].SelfAttention.o, block.layer[1].EncDecAttention.o, block.layer[2].DenseReluDense.wo]
    return small, large, scaled


def set_alpha(large, alpha: float) -> None:
    """Rescale an already built controlled large model to a new ``alpha``.

    Works on a model returned by :func:`build_controlled_pair` (which records the unscaled
    weights' scale in ``large._bild_alpha`` and the scaled modules in ``large._bild_scaled``).
    """
    old = large._bild_alpha
    if old == 0:
        raise ValueError("cannot rescale a model built with alpha=0")
    with torch.no_grad():
        for mod in large._bild_scaled:
            mod.weight.mul_(alpha / old)
    large._bild_alpha = alpha


def _apply_alpha(scaled, originals, alpha):
    with torch.no_grad():
        for mod, w in zip(scaled, originals):
            mod.weight.copy_(w * alpha)


def _finish(model):
    model.eval()
    gc = model.generation_config
    gc.eos_token_id = None
    gc.pad_token_id = 0
    gc.do_sample = False
    if model.config.is_encoder_decoder:
        gc.decoder_start_token_id = 0
        gc.bos_token_id = None
    return model


# --------------------------------------------------------------------------------------
# prompts and agreement
# --------------------------------------------------------------------------------------


def make_prompts(
    vocab: int, n: int, length: int = 16, batch_size: int = 1, seed: int = 1234, device="cpu"
) -> list[torch.Tensor]:
    """``n`` random prompts, each a ``(batch_size, length)`` LongTensor of ordinary token ids.

    All rows have the same length, so no padding / attention mask subtleties are involved.
    """
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(_FIRST_ORDINARY_ID, vocab, (batch_size, length), generator=g).to(device) for _ in range(n)]


@torch.no_grad()
def _large_greedy(large, prompts: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """Greedy continuation; returns the generated part (decoder-only) or decoder ids (enc-dec)."""
    out = large.generate(
        prompts,
        attention_mask=torch.ones_like(prompts),
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=0,
    )
    if large.config.is_encoder_decoder:
        return out  # (B, 1 + new_tokens), starts with decoder_start_token_id
    return out[:, prompts.shape[1] :]


@torch.no_grad()
def _small_on_continuation(small, prompts: torch.Tensor, gen: torch.Tensor):
    """The small model's logits at each position of the large model's continuation ``gen`` (as
    :func:`_large_greedy` returns it) and the tokens they are compared with: ``(logits (B, N, V), target (B, N))``."""
    if small.config.is_encoder_decoder:
        dec_in, target = gen[:, :-1], gen[:, 1:]
        logits = small(input_ids=prompts, attention_mask=torch.ones_like(prompts), decoder_input_ids=dec_in).logits
    else:
        full = torch.cat([prompts, gen], dim=1)
        logits = small(input_ids=full, attention_mask=torch.ones_like(full)).logits
        logits = logits[:, prompts.shape[1] - 1 : -1]
        target = gen
    return logits.float(), target


def agreement_on(small, prompts: torch.Tensor, continuation: torch.Tensor) -> float:
    """Greedy agreement of ``small`` on a large-model greedy continuation already generated (no large-model
    forward): ``prompts`` ``(B, L)``, ``continuation`` ``(B, N)`` the generated tokens (decoder-only) or the decoder
    ids starting with the decoder start token (encoder-decoder)."""
    logits, target = _small_on_continuation(small, prompts, continuation)
    return (logits.argmax(-1) == target).float().mean().item()


@torch.no_grad()
def _agreement_with(small, large, prompts: torch.Tensor, new_tokens: int, return_logits: bool = False):
    gen = _large_greedy(large, prompts, new_tokens)
    logits, target = _small_on_continuation(small, prompts, gen)
    agree = (logits.argmax(-1) == target).float().mean().item()
    distinct = sum(len(set(row.tolist())) for row in target) / target.numel()
    if return_logits:
        return agree, distinct, target.numel(), logits
    return agree, distinct, target.numel()


def _mean_confidence(logits: torch.Tensor, scale: float) -> float:
    return torch.softmax(logits * scale, dim=-1).amax(-1).mean().item()


def _fit_logit_scale(logits: torch.Tensor, target: float, iters: int = 40) -> float:
    """Scale ``s`` with mean(max softmax(s * logits)) == target (bisection on log s)."""
    lo, hi = math.log(1e-3), math.log(1e3)
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        if _mean_confidence(logits, math.exp(mid)) < target:
            lo = mid
        else:
            hi = mid
    return math.exp(0.5 * (lo + hi))


def measure_agreement(small, large, prompts, new_tokens: int = 48) -> float:
    """Greedy agreement of ``small`` with ``large`` (see module docstring).

    ``prompts`` is a ``(B, L)`` LongTensor or a list of them (all the same length).
    """
    if isinstance(prompts, (list, tuple)):
        prompts = torch.cat(list(prompts), dim=0)
    prompts = prompts.to(large.device)
    return _agreement_with(small, large, prompts, new_tokens)[0]


# --------------------------------------------------------------------------------------
# public builder
# --------------------------------------------------------------------------------------


def build_controlled_pair(
    family: str = "llama",
    agreement: float | None = 0.9,
    *,
    hidden: int = 512,
    layers: int = 16,
    vocab: int = 8000,
    small_layers: int = 1,
    heads: int | None = None,
    intermediate: int | None = None,
    encoder_layers: int | None = None,
    share_encoder: bool = True,
    cross_attention_scale: float = 0.3,
    init_std: float | None = None,
    alpha: float | None = None,
    confidence: float | str | None = "agreement",
    device="cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    calib_prompts: int = 8,
    calib_prompt_len: int = 16,
    calib_new_tokens: int = 48,
    tolerance: float = 0.03,
    max_iters: int = 12,
    alpha_range: tuple[float, float] = (1e-4, 4.0),
    max_positions: int = 2048,
):
    """Build ``(small, large, info)`` whose greedy agreement is close to ``agreement``.

    Args:
        family: ``"llama"`` (decoder-only), ``"t5"`` (encoder-decoder) or ``"qwen3_next"`` (hybrid; small_layers >= 2).
        agreement: target greedy agreement in (0, 1]; ``None`` with ``alpha`` given skips
            calibration (the agreement is still measured and reported).
        hidden, layers, vocab: size of the large model; ``layers`` counts decoder layers.
        small_layers: how many leading (decoder) layers the small model keeps.
        heads: attention heads (default ``max(1, hidden // 64)``).
        intermediate: MLP width (default ``~ 8/3 * hidden`` rounded to 64 for Llama,
            ``4 * hidden`` for T5).
        encoder_layers: T5 only, default ``layers`` (must be ``>= layers``).
        share_encoder: T5 only: the small model uses the very same encoder module (True) or
            a copy of it (False).
        cross_attention_scale: T5 only: factor on every decoder block's cross-attention
            output projection at init (see the comment in ``_t5_pair``).
        init_std: init scale (Llama ``initializer_range``, default 0.1; T5
            ``initializer_factor``, default 1.0).
        alpha: fixed scale instead of calibrating.
        confidence: mean max-probability the small model should have on the calibration
            positions.  Random models are nearly uniform over the vocabulary (max-probability
            ~0.05 at vocab 8000), which would make any confidence-based policy (BiLD's
            fallback, transformers' ``assistant_confidence_threshold``) fall back at every
            token.  The shared LM head is therefore rescaled (which changes no argmax, hence
            no greedy output and no agreement) so that the small model is calibrated on
            average: mean confidence == measured agreement (``"agreement"``, default), or a
            given float; ``None`` keeps the raw head.
        device, dtype: where the returned models live (built on CPU in fp32 first, so the
            weights do not depend on the device).  Calibration runs on that device/dtype.
        seed: weight-init seed (the global RNG state is restored afterwards).
        calib_prompts, calib_prompt_len, calib_new_tokens: the fixed calibration prompts
            (seeded from ``seed``) and the greedy continuation length measured.
        tolerance: bisection stops once ``|measured - agreement| <= tolerance``.
        max_iters: bisection iterations (on ``log(alpha)``) at most.

    Returns:
        ``(small, large, info)`` with both models in eval mode on ``device``/``dtype`` and
        ``info`` a :class:`PairInfo` (``info.agreement`` is the value measured).
    """
    family = family.lower()
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    if agreement is None and alpha is None:
        raise ValueError("give a target agreement or a fixed alpha")
    if agreement is not None and not (0.0 < agreement <= 1.0):
        raise ValueError("agreement must be in (0, 1]")
    if not (1 <= small_layers < layers):
        raise ValueError("need 1 <= small_layers < layers")
    heads = heads or max(1, hidden // 64)
    if hidden % heads:
        raise ValueError("hidden must be divisible by heads")

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if family in ("llama", "qwen3_next"):
            intermediate = intermediate or max(64, int(round(hidden * 8 / 3 / 64)) * 64)
            init_std = 0.1 if init_std is None else init_std
            make = _llama_pair if family == "llama" else _qwen3_next_pair
            small, large, scaled = make(
                hidden, layers, small_layers, vocab, heads, intermediate, init_std, max_positions
            )
        else:
            intermediate = intermediate or 4 * hidden
            init_std = 1.0 if init_std is None else init_std
            encoder_layers = encoder_layers or layers
            if encoder_layers < layers:
                raise ValueError("T5 needs encoder_layers >= layers (transformers' T5 generate crashes otherwise)")
            small, large, scaled = _t5_pair(
                hidden,
                layers,
                small_layers,
                vocab,
                heads,
                intermediate,
                init_std,
                encoder_layers,
                share_encoder,
                cross_attention_scale,
            )

    large = _finish(large).to(device=device, dtype=dtype)
    small = _finish(small).to(device=device, dtype=dtype)  # shared modules already moved: no-op for them
    originals = [m.weight.detach().clone() for m in scaled]
    prompts = torch.cat(make_prompts(vocab, calib_prompts, calib_prompt_len, seed=10_000 + seed), 0).to(device)

    history: list[tuple[float, float]] = []

    def evaluate(a: float) -> tuple[float, float, int]:
        _apply_alpha(scaled, originals, a)
        agree, distinct, positions = _agreement_with(small, large, prompts, calib_new_tokens)
        history.append((a, agree))
        return agree, distinct, positions

    if alpha is not None and agreement is None:
        final = float(alpha)
        agree, distinct, positions = evaluate(final)
        converged = True
    else:
        target = float(agreement)
        lo, hi = math.log(alpha_range[0]), math.log(alpha_range[1])
        if alpha is not None:  # start the search around a hint
            lo = min(lo, math.log(alpha) - 2.0)
            hi = max(hi, math.log(alpha) + 2.0)
        best = None  # (|err|, alpha, agree, distinct, positions)
        # agreement decreases (noisily) with alpha: bisect on log(alpha)
        for _it in range(max_iters):
            mid = 0.5 * (lo + hi)
            a = math.exp(mid)
            agree, distinct, positions = evaluate(a)
            err = abs(agree - target)
            if best is None or err < best[0]:
                best = (err, a, agree, distinct, positions)
            if err <= tolerance:
                break
            if agree > target:
                lo = mid
            else:
                hi = mid
        _, final, agree, distinct, positions = best
        _apply_alpha(scaled, originals, final)
        converged = abs(agree - target) <= tolerance

    originals.clear()  # free the weight copies (the closure above keeps the list)
    logit_scale, small_conf = 1.0, float("nan")
    if confidence is not None:
        agree2, _, _, logits = _agreement_with(small, large, prompts, calib_new_tokens, return_logits=True)
        want = agree2 if confidence == "agreement" else float(confidence)
        want = min(max(want, 1e-3), 0.999)
        logit_scale = _fit_logit_scale(logits, want)
        with torch.no_grad():
            head = large.get_output_embeddings()
            head.weight.mul_(logit_scale)
        small_conf = _mean_confidence(logits, logit_scale)
        if dtype != torch.float32:  # rescaled low-precision weights can flip near-ties: re-measure
            agree, distinct, positions = _agreement_with(small, large, prompts, calib_new_tokens)
    large._bild_alpha = final
    large._bild_scaled = scaled
    info = PairInfo(
        family=family,
        alpha=final,
        target_agreement=agreement,
        agreement=agree,
        distinct_fraction=distinct,
        converged=converged,
        tolerance=tolerance,
        hidden=hidden,
        layers=layers,
        small_layers=small_layers,
        vocab=vocab,
        encoder_layers=encoder_layers,
        init_std=init_std,
        seed=seed,
        device=str(device),
        dtype=str(dtype).replace("torch.", ""),
        calib_prompts=calib_prompts,
        calib_prompt_len=calib_prompt_len,
        calib_new_tokens=calib_new_tokens,
        positions=positions,
        logit_scale=logit_scale,
        small_confidence=small_conf,
        history=history,
    )
    return small, large, info
