"""Cost model of a generation run: how long its model calls alone take.

Engine efficiency = (time the model forwards of a run would take on their own) / (the
run's measured wall time).  The numerator is predicted from

* a :class:`CostTable` measured once per (model pair, device, dtype, batch size) by
  :func:`measure_costs`: the median time, with KV caches in place, of one small-model
  forward and of large-model forwards over ``1 .. k+1`` new tokens, plus the prefills (and,
  for encoder-decoder models, the encoder passes);
* a record of the model calls a run made: either an engine's ``gen.stats``
  (``small_forwards``, ``large_forwards``, ``verify_lengths``), a plain dict, a
  :class:`CallRecord`, or what :class:`ForwardCounter` saw through forward hooks (the only
  way to see inside ``transformers``' own assisted generation).

:func:`predict_time` is a pure function: the sum of :func:`predict_breakdown`'s parts, each
a count (or a list of token counts) times the matching per-call cost.  The papers'
analytical speedup formula lives in ``bild.expected_speedup``; this module does not repeat it.

Everything a run does besides those forwards - sampling, acceptance checks, cache cropping,
tensor bookkeeping, Python - is the engine's own overhead, ``measured - predicted``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

# the table lives in the engine (bild.timing: `costs=` takes one); re-exported here, where it is measured
from ..timing import CostTable, _interp  # noqa: F401

__all__ = [
    "CallRecord",
    "CostTable",
    "ForwardCounter",
    "measure_costs",
    "predict_breakdown",
    "predict_time",
    "to_call_record",
    "engine_efficiency",
    "best_fixed_draft",
]


# --------------------------------------------------------------------------------------
# measuring a cost table (`CostTable` itself: bild.timing)
# --------------------------------------------------------------------------------------


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _median_time(fn: Callable[[], Any], repeats: int, warmup: int, device) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _new_cache(model):
    from ..adapters import new_cache

    return new_cache(model)


class _Timer:
    """Times forwards of one model against a cache of ``past_len`` tokens."""

    def __init__(self, model, prompt, past_len, device, encoder_outputs=None):
        self.model = model
        self.device = device
        self.enc = encoder_outputs
        self.mask = None if encoder_outputs is None else torch.ones_like(prompt)
        self.is_ed = model.config.is_encoder_decoder
        self.batch = prompt.shape[0]
        vocab = model.config.vocab_size
        g = torch.Generator().manual_seed(0)
        self.tokens = torch.randint(3, vocab, (self.batch, past_len + 64), generator=g).to(device)
        if not self.is_ed:
            self.tokens[:, : prompt.shape[1]] = prompt
        self.past_len = past_len

    def _call(self, ids, cache, logits_to_keep=0):
        from ..adapters import capabilities

        arg = capabilities(self.model).cache_arg
        if self.is_ed:
            return self.model(
                encoder_outputs=self.enc,
                attention_mask=self.mask,
                decoder_input_ids=ids,
                use_cache=True,
                **{arg: cache},
            )
        return self.model(input_ids=ids, use_cache=True, logits_to_keep=logits_to_keep, **{arg: cache})

    @torch.no_grad()
    def prefill(self, length, repeats, warmup):
        ids = self.tokens[:, :length]
        keep = 0 if self.is_ed else 1  # transformers' generate keeps only the last logits at prefill

        def fn():
            self._call(ids, _new_cache(self.model), logits_to_keep=keep)

        return _median_time(fn, repeats, warmup, self.device)

    @torch.no_grad()
    def forward(self, n, repeats, warmup):
        cache = _new_cache(self.model)
        self._call(self.tokens[:, : self.past_len], cache)
        ids = self.tokens[:, self.past_len : self.past_len + n]

        def fn():
            self._call(ids, cache)
            cache.crop(-n)

        return _median_time(fn, repeats, warmup, self.device)


@torch.no_grad()
def measure_costs(
    small,
    large,
    *,
    prompt_len: int = 16,
    new_tokens: int = 64,
    max_verify: int = 11,
    batch_size: int = 1,
    repeats: int = 15,
    warmup: int = 3,
    past_len: int | None = None,
    prefill_lens: list[int] | None = None,
    forward_lens: list[int] | None = None,
) -> CostTable:
    """Measure a :class:`CostTable` for ``small``/``large`` on their device and dtype.

    Args:
        prompt_len: prompt (decoder-only) or encoder input (encoder-decoder) length.
        new_tokens: generation length of the runs to be predicted; the cache during the
            timed forwards holds ``past_len = prompt_len + new_tokens // 2`` tokens (the mean
            context of a run) unless ``past_len`` is given.
        max_verify: largest number of new tokens timed for forwards (``k + 1`` for drafts of
            up to ``k`` tokens); longer calls are extrapolated linearly.
        batch_size: rows per call.
        repeats, warmup: timed repetitions (the median is kept) and untimed warm-up calls.
        prefill_lens: prefill lengths to time (default: the prompt, and the prompt plus
            ``max_verify`` tokens, which covers transformers' assisted generation whose first
            large-model call verifies the first drafts together with the prompt).
        forward_lens: new-token counts to time (default ``1 .. max_verify``); the others are
            interpolated.  A sparse set (e.g. ``[1, 2, 4, 8, 12]``) makes a quick table.
    """
    device = large.device
    is_ed = bool(large.config.is_encoder_decoder)
    if past_len is None:
        past_len = (0 if is_ed else prompt_len) + max(1, new_tokens // 2)
    g = torch.Generator().manual_seed(1)
    prompt = torch.randint(3, large.config.vocab_size, (batch_size, prompt_len), generator=g).to(device)
    if prefill_lens is None:
        prefill_lens = [1, 1 + max_verify] if is_ed else [prompt_len, prompt_len + max_verify]

    out: dict[str, Any] = {}
    for role, model in (("small", small), ("large", large)):
        enc_out = None
        enc_time = 0.0
        if is_ed:
            encoder = model.get_encoder()
            mask = torch.ones_like(prompt)
            enc_time = _median_time(lambda: encoder(input_ids=prompt, attention_mask=mask), repeats, warmup, device)
            enc_out = encoder(input_ids=prompt, attention_mask=mask)
        timer = _Timer(model, prompt, past_len, device, encoder_outputs=enc_out)
        out[f"{role}_encoder"] = enc_time
        out[f"{role}_prefill"] = {L: timer.prefill(L, repeats, warmup) for L in prefill_lens}
        lens = forward_lens or range(1, max_verify + 1)
        out[f"{role}_forward"] = {n: timer.forward(n, repeats, warmup) for n in lens}

    return CostTable(
        **out,
        prompt_len=prompt_len,
        past_len=past_len,
        batch_size=batch_size,
        is_encoder_decoder=is_ed,
        device=str(device),
        dtype=str(large.dtype).replace("torch.", ""),
        repeats=repeats,
        meta={"threads": torch.get_num_threads()},
    )


# --------------------------------------------------------------------------------------
# call records
# --------------------------------------------------------------------------------------


@dataclass
class CallRecord:
    """The model calls of one run (or several runs, concatenated).

    ``small_steps`` / ``verify_lengths``: new tokens fed per non-prefill forward of the
    small / large model.  ``small_prefills`` / ``large_prefills``: tokens fed per prefill
    forward (``None`` entries mean "the cost table's reference prompt length").
    ``*_encoder_calls``: encoder passes (encoder-decoder models only).
    """

    small_steps: list[int] = field(default_factory=list)
    verify_lengths: list[int] = field(default_factory=list)
    small_prefills: list[int | None] = field(default_factory=list)
    large_prefills: list[int | None] = field(default_factory=list)
    small_encoder_calls: int = 0
    large_encoder_calls: int = 0

    @property
    def small_forwards(self) -> int:
        return len(self.small_steps) + len(self.small_prefills)

    @property
    def large_forwards(self) -> int:
        return len(self.verify_lengths) + len(self.large_prefills)

    def __add__(self, other: CallRecord) -> CallRecord:
        return CallRecord(
            self.small_steps + other.small_steps,
            self.verify_lengths + other.verify_lengths,
            self.small_prefills + other.small_prefills,
            self.large_prefills + other.large_prefills,
            self.small_encoder_calls + other.small_encoder_calls,
            self.large_encoder_calls + other.large_encoder_calls,
        )

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["small_forwards"] = self.small_forwards
        d["large_forwards"] = self.large_forwards
        return d


def _get(obj, name, default=None):
    if isinstance(obj, Mapping):
        return obj.get(name, default)
    return getattr(obj, name, default)


def _as_steps(v) -> list[int]:
    if v is None:
        return []
    if isinstance(v, int):
        return [1] * v
    return [int(x) for x in v]


def to_call_record(
    stats_like,
    *,
    small_prefills: int | None = None,
    large_prefills: int | None = None,
    encoder_calls: tuple[int, int] | None = None,
) -> CallRecord:
    """Normalise a run's statistics into a :class:`CallRecord`.

    Accepted inputs (objects or mappings):

    * a :class:`CallRecord` (returned unchanged);
    * an engine's stats (``bild.GenerationStats`` or its ``as_dict()``): ``small_forwards``
      and ``large_forwards`` count every forward, prefills included; ``verify_widths`` (or, in
      a record without it, ``verify_lengths``) lists the tokens per row of each large forward
      after the prefill.  Large prefills =
      ``large_forwards - len(verify_lengths)``; small prefills default to 1 per large prefill
      (one per generate call), and every other small forward is counted as a 1-token step;
    * a hand-made record with ``small_steps`` (an int, or a list of tokens per step),
      ``verify_lengths``, and ``prefills`` (one prefill of each model per generate call) or
      ``small_prefills`` / ``large_prefills`` (ints or lists of prefill lengths), optionally
      ``small_encoder_calls`` / ``large_encoder_calls``.

    For encoder-decoder pairs the encoder passes default to one per prefill of each model;
    ``encoder_calls=(small, large)`` overrides that (e.g. ``(0, 1)`` for an engine that runs
    a shared encoder once).
    """
    if isinstance(stats_like, CallRecord):
        return stats_like
    # an engine's stats: the padded width of each verify pass (`verify_lengths` lists each row's own tokens)
    widths = _get(stats_like, "verify_widths")
    verify = [int(x) for x in (widths if widths is not None else _get(stats_like, "verify_lengths") or [])]
    prefills = _get(stats_like, "prefills")

    def prefill_list(value, fallback):
        if value is None:
            value = fallback
        if isinstance(value, int):
            return [None] * value
        return list(value)

    large_forwards = _get(stats_like, "large_forwards")
    if large_prefills is None:
        large_prefills = _get(stats_like, "large_prefills")
    if large_prefills is None:
        if prefills is not None:
            large_prefills = prefills
        elif large_forwards is not None:
            large_prefills = int(large_forwards) - len(verify)
        else:
            large_prefills = 1
    lp = prefill_list(large_prefills, 1)

    if small_prefills is None:
        small_prefills = _get(stats_like, "small_prefills")
    if small_prefills is None:
        small_prefills = prefills if prefills is not None else len(lp)
        if _get(stats_like, "small_forwards") == 0:  # the small model never ran (drafting off all call)
            small_prefills = 0
    sp = prefill_list(small_prefills, len(lp))

    steps = _get(stats_like, "small_steps")
    if steps is None:
        small_forwards = _get(stats_like, "small_forwards")
        if small_forwards is None:
            raise ValueError("stats need small_steps or small_forwards")
        n = int(small_forwards) - len(sp)
        if n < 0:
            raise ValueError(f"small_forwards={small_forwards} is less than the {len(sp)} small prefills assumed")
        steps = n
    steps = _as_steps(steps)

    if encoder_calls is not None:
        se, le = encoder_calls
    else:
        se = _get(stats_like, "small_encoder_calls")
        le = _get(stats_like, "large_encoder_calls")
        se = len(sp) if se is None else int(se)
        le = len(lp) if le is None else int(le)
    return CallRecord(steps, verify, sp, lp, se, le)


# --------------------------------------------------------------------------------------
# prediction
# --------------------------------------------------------------------------------------


def predict_breakdown(stats_like, costs: CostTable, **kwargs) -> dict[str, float]:
    """Predicted seconds per kind of model call; :func:`predict_time` is their sum.

    ``kwargs`` go to :func:`to_call_record`.  Encoder passes are counted only for
    encoder-decoder cost tables.
    """
    rec = to_call_record(stats_like, **kwargs)
    parts = {
        "small_prefill": sum(costs.small_prefill_time(L) for L in rec.small_prefills),
        "small_steps": sum(costs.small(n) for n in rec.small_steps),
        "large_prefill": sum(costs.large_prefill_time(L) for L in rec.large_prefills),
        "large_verify": sum(costs.large(n) for n in rec.verify_lengths),
    }
    if costs.is_encoder_decoder:
        parts["small_encoder"] = rec.small_encoder_calls * costs.small_encoder
        parts["large_encoder"] = rec.large_encoder_calls * costs.large_encoder
    return parts


def predict_time(stats_like, costs: CostTable, **kwargs) -> float:
    """Seconds the model calls of a run take on their own (see :func:`predict_breakdown`)."""
    return float(sum(predict_breakdown(stats_like, costs, **kwargs).values()))


def best_fixed_draft(costs: CostTable, agreement: float, max_gamma: int = 12) -> dict[str, float]:
    """Best fixed draft length for greedy speculative decoding under this cost table.

    Per round: ``gamma`` small steps and one large forward over ``gamma + 1`` tokens, for
    ``(1 - a^(gamma+1)) / (1 - a)`` tokens on average (i.i.d. acceptance ``a``).  Unlike
    ``bild.expected_speedup`` it uses the *measured* cost of a verify pass over ``gamma + 1``
    tokens, which on a CPU grows with ``gamma``.  Prefills are ignored.  Returns the best
    ``gamma``, its tokens per round, seconds per token and speedup over large greedy steps.
    """
    best = None
    for g in range(1, max_gamma + 1):
        tokens = g + 1 if agreement >= 1.0 else (1 - agreement ** (g + 1)) / (1 - agreement)
        per_token = (g * costs.small(1) + costs.large(g + 1)) / tokens
        if best is None or per_token < best["seconds_per_token"]:
            best = dict(
                gamma=g, tokens_per_round=tokens, seconds_per_token=per_token, speedup=costs.large(1) / per_token
            )
    return best


def engine_efficiency(stats_like, costs: CostTable, measured_seconds: float, **kwargs) -> float:
    """``predict_time / measured``: 1.0 means the engine adds nothing around its forwards."""
    return predict_time(stats_like, costs, **kwargs) / measured_seconds


# --------------------------------------------------------------------------------------
# forward hooks
# --------------------------------------------------------------------------------------


def _past_length(cache) -> int:
    if cache is None:
        return 0
    try:
        return int(cache.get_seq_length())
    except Exception:  # legacy tuple caches
        try:
            return int(cache[0][0].shape[-2])
        except Exception:
            return 0


@dataclass
class Call:
    """One forward seen by :class:`ForwardCounter`."""

    model: str
    kind: str  # "prefill", "step" or "encoder"
    tokens: int  # new tokens fed (per row)
    past: int  # cached tokens before the call
    batch: int


class ForwardCounter:
    """Counts the forwards of named models with forward pre-hooks.

    ``ForwardCounter(small=small, large=large)`` hooks each model's top-level ``forward``
    and, for encoder-decoder models, its encoder (a module shared by several models is hooked
    once, under the first name).  A forward whose cache is empty (or absent) is a prefill,
    any other a step.  Use as a context manager (hooks are removed on exit) or call
    :meth:`remove`.  :meth:`reset` clears the calls; :meth:`record` turns them into a
    :class:`CallRecord` for :func:`predict_time`.
    """

    def __init__(self, **models):
        self.calls: list[Call] = []
        self._handles = []
        self.names = list(models)
        seen_encoders: dict[int, str] = {}
        for name, model in models.items():
            self._handles.append(model.register_forward_pre_hook(self._make_hook(name), with_kwargs=True))
            if getattr(model.config, "is_encoder_decoder", False):
                enc = model.get_encoder()
                if id(enc) not in seen_encoders:
                    seen_encoders[id(enc)] = name
                    self._handles.append(enc.register_forward_pre_hook(self._make_encoder_hook(name), with_kwargs=True))
        self.shared_encoder = len(seen_encoders) < sum(
            bool(getattr(m.config, "is_encoder_decoder", False)) for m in models.values()
        )

    def _make_hook(self, name):
        def hook(module, args, kwargs):
            ids = kwargs.get("decoder_input_ids") if module.config.is_encoder_decoder else None
            if ids is None:
                ids = kwargs.get("input_ids", args[0] if args else None)
                if module.config.is_encoder_decoder and kwargs.get("decoder_inputs_embeds") is not None:
                    ids = kwargs["decoder_inputs_embeds"]
            if ids is None and kwargs.get("inputs_embeds") is not None:
                ids = kwargs["inputs_embeds"]
            batch, tokens = (int(ids.shape[0]), int(ids.shape[1])) if ids is not None else (0, 0)
            past = _past_length(kwargs.get("cache", kwargs.get("past_key_values")))
            self.calls.append(Call(name, "prefill" if past == 0 else "step", tokens, past, batch))

        return hook

    def _make_encoder_hook(self, name):
        def hook(module, args, kwargs):
            ids = kwargs.get("input_ids", args[0] if args else None)
            if ids is None:
                ids = kwargs.get("inputs_embeds")
            shape = tuple(ids.shape) if ids is not None else (0, 0)
            self.calls.append(Call(name, "encoder", int(shape[1]), 0, int(shape[0])))

        return hook

    # -- queries -------------------------------------------------------------------------
    def reset(self) -> None:
        self.calls.clear()

    def count(self, name: str, kind: str | None = None) -> int:
        """Forwards of ``name`` (encoder passes excluded unless ``kind="encoder"``)."""
        if kind is None:
            return sum(c.model == name and c.kind != "encoder" for c in self.calls)
        return sum(c.model == name and c.kind == kind for c in self.calls)

    def tokens(self, name: str, kind: str | None = None) -> list[int]:
        return [c.tokens for c in self.calls if c.model == name and (c.kind == kind if kind else c.kind != "encoder")]

    def record(self, small: str = "small", large: str = "large") -> CallRecord:
        """The calls of ``small`` and ``large`` as a :class:`CallRecord`."""
        rec = CallRecord()
        for c in self.calls:
            if c.model == small:
                if c.kind == "prefill":
                    rec.small_prefills.append(c.tokens)
                elif c.kind == "step":
                    rec.small_steps.append(c.tokens)
                else:
                    rec.small_encoder_calls += 1
            elif c.model == large:
                if c.kind == "prefill":
                    rec.large_prefills.append(c.tokens)
                elif c.kind == "step":
                    rec.verify_lengths.append(c.tokens)
                else:
                    rec.large_encoder_calls += 1
        return rec

    # -- lifetime ------------------------------------------------------------------------
    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def __enter__(self) -> ForwardCounter:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()
