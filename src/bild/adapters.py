"""One adapter per model: the only place that knows about model families.

The decoding loop sees every model through `ModelAdapter`: feed tokens, get logits, keep a prefix.
The adapter owns the KV cache and a per-row mask over cache slots. In a batch, rows that take fewer
tokens than others in a forward leave masked slots ("holes"); rejected draft tokens are masked out and,
once they are at the end of every row, cropped. Nothing kept is ever recomputed.

How a model's batch is laid out (`batch_layout`, decided once per model by probes):
- "holes": decoder-only models that take `position_ids` and have only full-attention `DynamicLayer`s,
  and whose output a masked slot does not change (Llama, GPT-2, GPT-NeoX, OPT, ...);
- "aligned": every row's tokens kept contiguous and ending at the last slot, the cache re-packed when rows
  diverge. Exact where attention depends on slot distances only: T5 / mT5 / UMT5 / LongT5 / Switch's
  relative bias, ALiBi over slots (MPT), masks' cumulative positions (Bloom);
- "rows": the generator decodes the batch row by row, each row with its prompt padding in the masked slots
  transformers' generate gives it (so the row sees what it sees in a padded `generate`), never re-packed:
  - positions from the slot index or cache length, with no per-row position argument (BART, mBART,
    Marian, Pegasus, M2M100, Blenderbot, Whisper's decoder; BartForCausalLM, TrOCR, GIT), or one its
    forward's signature does not name, so that transformers' generate does not pass it (WhisperForCausalLM);
  - sliding-window layers (Mistral, Qwen2/3, Gemma 2/3, Phi-3, Starcoder2, Cohere2, ...) and gpt-neo's
    local attention: masked slots would use up the window; linear-attention / convolution / state-space
    layers (LFM2; on transformers >= 5.25 the hybrids and Mamba2): masked slots would enter the state.
Layers with a recurrent state are rolled back through transformers' record of it (`record_past`: the states after
each token of a forward that may be rolled back), and only where a probe running the engine's own feeds and
rollbacks gives the logits of uncached forwards (`rollback_is_exact`, `check_model`).
Both batched layouts re-pack the cache when masked slots pass 25 % of the longest row.
Models without a KV cache (openai-gpt) are refused (`check_model`).
"""
from __future__ import annotations

import functools
import inspect
import warnings
from dataclasses import dataclass

import torch
import transformers
from transformers import DynamicCache, EncoderDecoderCache, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput

from . import online_costs
from ._compat import TRANSFORMERS_NEWEST, _release
from .vocabulary import token_index, widen_logits


class ModelAdapter:
    """Incremental decoding over one model's cache, for B rows that advance by different amounts.

    Device state: the cache and `mask` [B, L] bool over its slots. Host state (plain Python, so deciding what
    to do never waits on the device): `slots[r]`, the slots holding row r's tokens in order, and `n_valid[r]`.

    Layouts (`layout`, chosen per model by a probe, see the module docstring):
      "holes"    masked slots may sit anywhere; positions go in through `position_ids`
      "aligned"  every row's tokens are contiguous and end at the last slot before each forward (rows are
                 re-packed, "compacted", when they diverge), so slot distances are token distances
      "rows"     neither is exact for this model: the generator decodes its batches row by row
    In both batched layouts, slots masked in every row are reclaimed: the cache never holds more than
    `COMPACT_AT` x the longest row (plus a few slots) before it is re-packed.
    """

    COMPACT_AT = 1.25  # re-pack when the cache holds more slots than this x the longest row's tokens

    def __init__(self, model: PreTrainedModel):
        self.model = model
        self.is_encoder_decoder = bool(model.config.is_encoder_decoder)
        self.caps = capabilities(model)
        self.tokens_fed = 0
        self.forwards = 0
        self.compactions = 0
        self.times = online_costs.model_times(model)  # forwards' host times feed the shared cost estimates
        self.seconds = 0.0  # host time in forwards, where timed (the loop subtracts it from a round's time)
        self.read_clock = None  # an asynchronous device's forwards are timed at the host reads (`online_costs`)
        self.vocab = token_index(model, execution_device(model))  # a pruned head's (ids, V), or None

    @functools.cached_property
    def layout(self) -> str:
        """"holes", "aligned" or "rows". Asked only for batches or padded prompts: the first time, it runs
        two-forward probes on the model (cached on the model)."""
        return batch_layout(self.model)

    @property
    def supports_holes(self) -> bool:
        """Rows of a batch can be decoded together (either batched layout)."""
        return self.layout != "rows"

    @property
    def masks_filler(self) -> bool:
        """Tokens fed only to keep a batch rectangular (finished rows, rows that stopped drafting) go in as
        masked slots: positions come from each row's own token count, so filler counted as tokens would push
        a row's positions past any it reaches (an absolute-position table overflows). Layouts without
        positions feed filler as tokens instead, which keeps "aligned" rows contiguous."""
        return self.caps.takes_positions

    @property
    def dense(self) -> bool:
        """No masked slot anywhere: the model may skip building an attention mask."""
        return all(len(s) == self.length for s in self.slots)

    # -- setup --------------------------------------------------------------------------------------
    def start(self, batch_size: int, device: torch.device, encoder_kwargs: dict | None = None) -> None:
        """Fresh cache. `encoder_kwargs` (encoder-decoder only): `encoder_outputs` and `attention_mask`."""
        self.cache = new_cache(self.model)
        # layers with a recurrent state: a forward of n tokens must record the states after each of them to be
        # rolled back into (`feed` grows the recording); every rollback crops, so the record never outgrows a round
        self.recorded = 1 if state_layers(self.cache) else 0
        self.unsettled = 0  # tokens fed since the last crop (recorded caches)
        self.prefill = True  # the next forward is the cache's first
        self.encoder_kwargs = encoder_kwargs or {}
        self.device = device
        self.mask = torch.zeros(batch_size, 0, dtype=torch.bool, device=device)
        self.slots: list[list[int]] = [[] for _ in range(batch_size)]
        self.n_valid = [0] * batch_size
        self.length = 0  # cache slots

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> dict:
        """Run the encoder once (encoder-decoder models). Returns the kwargs `start` takes."""
        name = getattr(self.model, "main_input_name", "input_ids")  # Whisper: input_features; vision: pixel_values
        enc = self.model.get_encoder()(**{name: input_ids}, attention_mask=attention_mask, return_dict=True)
        return {"encoder_outputs": enc, "attention_mask": attention_mask}

    # -- the three operations the loop uses ---------------------------------------------------------
    @torch.no_grad()
    def feed(self, ids: torch.Tensor, valid: list[list[bool]], keep: int) -> torch.Tensor:
        """Append `ids` [B, n] to the cache; `valid[r][j]` (host) marks real tokens (False = a masked slot).

        Returns float32 logits [B, keep, V] of the last `keep` positions (full width for a pruned head too). A
        "rows" model takes masked slots only as a single row (B = 1: its left-padded prompt, fed as
        transformers' generate feeds it).
        """
        B, n = ids.shape
        if B > 1 and not all(all(v) for v in valid) and self.layout == "rows":
            raise RuntimeError("this model cannot take masked slots; run its batch row by row")
        if self.length and self._needs_repack():
            self.compact()
        v = to_device(valid, self.device, torch.bool).reshape(B, n)
        pos = to_device(self.n_valid, self.device)[:, None] + v.long().cumsum(-1) - 1
        self.mask = torch.cat([self.mask, v], dim=1)
        for r, row in enumerate(valid):
            got = [self.length + j for j, x in enumerate(row) if x]
            self.slots[r] += got
            self.n_valid[r] += len(got)
            self.tokens_fed += len(got)
        self.length += n
        if self.recorded and n > self.recorded and not self.prefill:
            self._record(n)
        kwargs = {self.caps.cache_arg: self.cache, "use_cache": True}
        if self.caps.logits_to_keep:
            kwargs["logits_to_keep"] = keep
        mask = None if self.dense else self.mask.long()
        if self.is_encoder_decoder:
            kwargs.update(self.encoder_kwargs, decoder_input_ids=ids, decoder_attention_mask=mask)
        else:
            kwargs.update(input_ids=ids, attention_mask=mask)
            if self.caps.takes_positions:
                kwargs["position_ids"] = pos.clamp(min=0)
        t0 = online_costs.clock() if self.times is not None else 0.0
        out = self.model(**kwargs)
        logits = out.logits[:, -keep:].float()
        if self.vocab is not None:  # [B, keep, V_sub] -> [B, keep, V], the other tokens improbable
            logits = widen_logits(logits, *self.vocab)
        if self.read_clock is not None:  # not run yet: timed at the next host read
            self.read_clock.launched(self, B, n, t0, self.length > n)
        elif self.times is not None:
            dt = online_costs.clock() - t0
            self.seconds += dt
            if self.length > n:  # not the prefill
                self.times.record(B, n, dt)
        self.forwards += 1
        if self.recorded:
            self.unsettled += n
            if self.prefill:  # never rolled back: its record goes now
                self._crop(0)
        self.prefill = False
        return logits

    def keep_first(self, counts: list[int]) -> None:
        """Roll back: row r keeps its first `counts[r]` tokens; later slots are masked, and slots masked in
        every row at the end of the cache are cropped."""
        counts = [min(c, n) for c, n in zip(counts, self.n_valid)]
        if counts != self.n_valid:
            for r, c in enumerate(counts):
                del self.slots[r][c:]
            self.n_valid = counts
            self.mask = self.mask & (self.mask.long().cumsum(-1) <= to_device(counts, self.device)[:, None])
        new_len = max((s[-1] + 1 for s in self.slots if s), default=0)
        if new_len < self.length or self.recorded:  # crop(0) drops a recurrent layer's record (as transformers does)
            self._crop(new_len - self.length)

    def _crop(self, by: int) -> None:
        self.cache.crop(by)
        self.mask = self.mask[:, : self.length + by]
        self.length += by
        self.unsettled = 0

    def _record(self, n: int) -> None:
        """Have the next forward record the recurrent states after each of its `n` tokens (it may be rolled back
        anywhere into). Re-arming the record drops what it holds, so it must hold nothing: the loop rolls back (or
        settles) every model after each round, and multi-token forwards open a round (catch-up, verify pass)."""
        if self.unsettled:
            raise RuntimeError(f"bild: a {n}-token forward of {type(self.model).__name__} after {self.unsettled} "
                               "tokens not yet settled by a rollback; its recurrent state could not be rolled back")
        record_past(self.cache, n)
        self.cache.crop(0)  # each state its own (empty) record
        self.recorded = n

    def select_rows(self, rows: list[int]) -> None:
        """Row r continues from what row rows[r] holds (cache, mask, bookkeeping): batch speculative
        decoding hands every draft of a prompt the chosen draft's state."""
        idx = to_device(rows, self.device)
        self.cache.reorder_cache(idx)
        self.mask = self.mask.index_select(0, idx)
        self.slots = [list(self.slots[i]) for i in rows]
        self.n_valid = [self.n_valid[i] for i in rows]

    # -- compaction ---------------------------------------------------------------------------------
    def _needs_repack(self) -> bool:
        """Before a forward: "aligned" needs every row contiguous and ending at the last slot; any layout
        re-packs when masked slots exceed the allowance."""
        if self.dense:
            return False
        if self.layout == "rows":  # one row (see `feed`): its prompt padding stays in the slots it holds in
            return False           # transformers' own generate, where this family's positions / window count it
        if self.length > self.COMPACT_AT * max(self.n_valid) + 4:
            return True
        if self.layout != "aligned":
            return False
        return any(s and (s[-1] != self.length - 1 or s[-1] - s[0] + 1 != len(s)) for s in self.slots)

    def compact(self) -> None:
        """Re-pack the cache: each row's tokens keep their order and move to the end (masked slots first),
        and slots masked in every row are dropped. Slot count becomes the longest row's token count."""
        L = max(self.n_valid)
        order = torch.argsort(self.mask.long(), dim=1, stable=True)[:, self.length - L:]  # [B, L]
        rows = torch.arange(order.shape[0], device=order.device)[:, None]
        for layer in _self_attention_layers(self.cache):
            if getattr(layer, "keys", None) is None or layer.keys.numel() == 0:
                continue
            # [B, H, L, D] -> per row, slots in `order` (whole [H, D] blocks: ~3x faster than a gather on a CPU)
            layer.keys = layer.keys.transpose(1, 2)[rows, order].transpose(1, 2)
            layer.values = layer.values.transpose(1, 2)[rows, order].transpose(1, 2)
        self.mask = self.mask.gather(1, order)
        self.slots = [list(range(L - n, L)) for n in self.n_valid]
        self.length = L
        self.compactions += 1


# -- what a model can do, found by running it (not by reading how its forward is spelled) ----------------
@dataclass(frozen=True)
class Capabilities:
    """How the engine calls a model's forward, found once per model by `capabilities`.

    cache_arg        the keyword under which the forward fills a KV cache passed in: "cache" (transformers
                     >= 5.24), "past_key_values" (earlier releases), None (refused, for `cache_problem`)
    takes_positions  decoder-only, and `position_ids` changes its output (per-row positions can go in)
    logits_to_keep   the forward honours `logits_to_keep` (only the last positions' logits are computed)
    """

    cache_arg: str | None
    takes_positions: bool
    logits_to_keep: bool
    cache_problem: str = ""  # why cache_arg is None


CACHE_ARGS = ("cache", "past_key_values")  # the current name first: the old one warns on transformers >= 5.24


def new_cache(model: PreTrainedModel):
    """A fresh cache the engine can roll back: a DynamicCache (in an EncoderDecoderCache for encoder-decoders)
    with the model's layer kinds. Sliding-window layers keep only their window and are rolled back through
    `activate_past_recording` where this transformers release does that correctly (`window_rollback_works`,
    a probe); elsewhere they keep every slot as full layers (the mask still applies the window)."""
    cfg = model.config
    if cfg.is_encoder_decoder:
        return EncoderDecoderCache(DynamicCache(config=cfg), DynamicCache(config=cfg))
    cache = DynamicCache(config=cfg)
    if _window_layers(cache) and not window_rollback_works():
        return DynamicCache()  # full layers (check_model refused models with other kinds of layer here)
    record_past(cache, 1)
    return cache


def record_past(cache, states: int) -> None:
    """Have the cache record what `crop` needs to roll it back: sliding-window layers their past slots, layers
    with a recurrent state (linear attention, state-space) the state after each of the last `states` tokens of a
    forward (transformers' `recurrent_states_to_keep`, 5.25 on; older releases take no size, and the rollback
    probe refuses their recurrent layers). Features are probed, not versions checked."""
    if not hasattr(cache, "activate_past_recording"):
        return
    if hasattr(cache, "get_recurrent_states_to_keep"):
        cache.activate_past_recording(recurrent_states_to_keep=states)
    else:
        cache.activate_past_recording()


def state_layers(cache) -> list:
    """The decoder's cache layers that keep a convolution or recurrent state rather than one slot per token
    (linear attention, state-space layers): a crop restores them from what `record_past` recorded."""
    return [layer for layer in _self_attention_layers(cache) if hasattr(layer, "conv_states")]


PLAIN_LAYERS = {"DynamicLayer", "DynamicSlidingWindowLayer"}  # cache layers whose rollback needs no model probe


def _window_layers(cache) -> bool:
    """The cache has sliding-window layers (which keep only their window) and only those besides full ones."""
    kinds = {type(layer).__name__ for layer in getattr(cache, "layers", [])}
    return "DynamicSlidingWindowLayer" in kinds and kinds <= {"DynamicLayer", "DynamicSlidingWindowLayer"}


def _unrollable_window(model: PreTrainedModel) -> bool:
    """Sliding-window state mixed into other kinds of layer (linear attention + window), on a release that
    cannot roll window layers back: no full-layer replacement exists, so the model is refused."""
    if model.config.is_encoder_decoder:
        return False
    cache = DynamicCache(config=model.config)
    windowed = any("Sliding" in type(layer).__name__ for layer in cache.layers)
    return windowed and not _window_layers(cache) and not window_rollback_works()


@functools.lru_cache(maxsize=1)
def window_rollback_works() -> bool:
    """Whether this transformers release rolls sliding-window cache layers back exactly: on a tiny 1-layer
    Mistral with a 3-token window (built from a config, seeded), a sequence of the engine's operations
    (multi-token feeds past the window, crops, single steps) must give the logits of uncached forwards over
    the same tokens. True on 5.24; on 5.17 a feed after a crop fails on the mask's size."""
    from transformers import MistralConfig, MistralForCausalLM

    cfg = MistralConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                        num_attention_heads=2, num_key_value_heads=1, sliding_window=3, max_position_embeddings=64)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        m = MistralForCausalLM(cfg).eval()
    return any(_window_ops_exact(m, name) for name in CACHE_ARGS)


@torch.no_grad()
def _window_ops_exact(m, arg: str) -> bool:
    cache = DynamicCache(config=m.config)
    if not hasattr(cache, "activate_past_recording"):
        return False
    cache.activate_past_recording()
    seq, g = [], torch.Generator().manual_seed(1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for op in (5, 1, 3, -2, 1, 4, -3, 1, 1, 2, -1, 1):
                if op < 0:
                    cache.crop(op)
                    del seq[op:]
                    continue
                new = torch.randint(3, 32, (op,), generator=g).tolist()
                out = m(input_ids=torch.tensor([new]), use_cache=True, **{arg: cache}).logits[0, -1]
                seq += new
                if not _close(m(input_ids=torch.tensor([seq]), use_cache=False).logits[0, -1], out, torch.float32):
                    return False
    except Exception:  # noqa: BLE001 - this release cannot do it (or takes no such keyword)
        return False
    return True


def capabilities(model: PreTrainedModel) -> Capabilities:
    """Probe the model with tiny forwards (cached on the model as `_bild_caps`). A forward wrapped by
    accelerate hooks, PEFT, `torch.compile` or a plain `def forward(*args, **kwargs)` is probed the same way:
    what counts is what the model does with an argument, not whether its signature names it."""
    caps = model.__dict__.get("_bild_caps")
    if caps is None:
        arg, problem = _probe_cache_arg(model)
        caps = Capabilities(arg, _probe_positions(model), _probe_logits_to_keep(model), problem)
        model.__dict__["_bild_caps"] = caps
    return caps


def _accepts(model, name: str, unknown: bool | None) -> bool | None:
    """Whether the forward's signature names `name`, as transformers' generate reads it (a PEFT model's base
    model's forward; `functools.wraps` wrappers followed): True if it does, False if it names other arguments
    but not this one, `unknown` if it names none (`*args, **kwargs`)."""
    spelled = model.get_base_model() if callable(getattr(model, "get_base_model", None)) else model
    try:
        params = inspect.signature(spelled.forward).parameters
    except (TypeError, ValueError):
        return unknown
    if name in params:
        return True
    named = [p for p in params.values() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    return False if named else unknown


def _probe_inputs(model: PreTrainedModel, ids: list[int]) -> dict:
    """Inputs for a decoder step over `ids`: decoder-only `input_ids`; encoder-decoder `decoder_input_ids`
    over a stand-in encoder output (zeros), so models whose encoder takes features or pixels probe alike."""
    dev, cfg = execution_device(model), model.config
    t = torch.tensor([ids], device=dev)
    if not cfg.is_encoder_decoder:
        return {"input_ids": t}
    d = getattr(cfg, "d_model", None) or getattr(cfg, "hidden_size", None)
    enc = BaseModelOutput(last_hidden_state=torch.zeros(1, 2, int(d), device=dev, dtype=model.dtype))
    return {"decoder_input_ids": t, "encoder_outputs": enc}


def _probe_tokens(model: PreTrainedModel, n: int) -> list[int]:
    vocab = int(model.config.get_text_config().vocab_size)
    return [(7 * i + 3) % max(vocab - 3, 1) + 3 for i in range(1, n + 1)]


NON_FINITE = "gives non-finite logits (NaN or inf) on a probe forward over 4 tokens"
NOT_FILLED = "has no KV cache (given one as `cache` or `past_key_values`, its forward does not fill it)"
NOT_CONTINUED = ("does not continue from its KV cache as from one pass (4 tokens through the cache as 2 + 2 or "
                 "2 + 1 + 1 give other logits than 4 at once), so a multi-token verify pass would differ from its "
                 "own decoding")


@torch.no_grad()
def _probe_cache_arg(model: PreTrainedModel) -> tuple[str | None, str]:
    """The keyword under which the forward keeps a KV cache we pass and continues from it, as the engine
    uses it: per name tried, 4 tokens fed through a fresh cache at once, as 2 + 2 (a verify pass) and as
    2 + 1 + 1 (draft steps) must fill it and give the same last logits. Deprecation warnings are caught: a
    name that warns is used only when no other works. Returns (keyword or None, why None)."""
    t, fallback, ran, problem = _probe_tokens(model, 4), None, False, NOT_FILLED
    for name in CACHE_ARGS:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                outs, filled = [], True
                for i, cuts in enumerate(((0, 4), (0, 2, 4), (0, 2, 3, 4))):
                    cache = new_cache(model)
                    for a, b in zip(cuts, cuts[1:]):
                        out = model(**_probe_inputs(model, t[a:b]), use_cache=True, **{name: cache})
                        ran = ran or i == 0
                    filled = filled and _cached_tokens(cache) == 4
                    outs.append(out.logits[0, -1].float())
            except Exception:  # noqa: BLE001 - a keyword the forward rejects, or a cache it cannot continue from
                if outs and filled:  # it kept 4 tokens at once, then failed to continue in pieces
                    problem = NOT_CONTINUED
                continue
        if not filled:
            continue
        if not all(_finite(o) for o in outs):
            return None, NON_FINITE
        if not all(_close(outs[0], o, model.dtype) for o in outs[1:]):
            problem = NOT_CONTINUED
            continue
        if not any(issubclass(w.category, (FutureWarning, DeprecationWarning)) and name in str(w.message)
                   for w in caught):
            return name, ""
        fallback = fallback or name
    if not ran:  # the probe's inputs do not fit this model at all: trust its signature
        fallback = next((n for n in CACHE_ARGS if _accepts(model, n, False)), None)
    return fallback, "" if fallback else problem


def _cached_tokens(cache) -> int:
    try:
        return int(cache.get_seq_length())
    except Exception:  # noqa: BLE001 - a cache of layers without a length (the model wrote no KV into it)
        return 0


@torch.no_grad()
def _probe_positions(model: PreTrainedModel) -> bool:
    """Decoder-only models: per-row `position_ids` go in where transformers' generate passes them, i.e. the
    forward (a PEFT model's base model's; `functools.wraps` wrappers followed) names them. A forward whose
    signature names another argument but not this one gets none, as in transformers (WhisperForCausalLM
    numbers tokens by cache slot, padding included, so it is decoded row by row with its padding). A
    forward that names nothing (a plain `def forward(*args, **kwargs)` wrapper) is probed: positions go in
    when moving one token's position changes the logits."""
    if model.config.is_encoder_decoder:
        return False
    said = _accepts(model, "position_ids", None)
    if said is not None:
        return said
    t = _probe_tokens(model, 3)
    try:
        a, b = (model(**_probe_inputs(model, t), position_ids=torch.tensor([p], device=execution_device(model)),
                      use_cache=False).logits[0, -1].float() for p in ([0, 1, 2], [0, 1, 5]))
    except Exception:  # noqa: BLE001 - rejects the argument
        return False
    return not torch.equal(a, b)


@torch.no_grad()
def _probe_logits_to_keep(model: PreTrainedModel) -> bool:
    """The forward computes only the last positions' logits when asked: said by its signature, or for one
    that names nothing, seen in the shape of a 2-token forward's logits with `logits_to_keep=1`."""
    said = _accepts(model, "logits_to_keep", None)
    if said is not None:
        return said
    try:
        return model(**_probe_inputs(model, _probe_tokens(model, 2)), logits_to_keep=1,
                     use_cache=False).logits.shape[1] == 1
    except Exception:  # noqa: BLE001 - rejects the argument
        return False


def execution_device(model) -> torch.device:
    """Where the model computes: its parameters' device or, with accelerate hooks whose weights sit on "meta"
    (offloaded), the first hook's execution device."""
    dev = model.device
    if dev.type != "meta":
        return dev
    for m in model.modules():
        hooked = getattr(getattr(m, "_hf_hook", None), "execution_device", None)
        if hooked is not None:
            return torch.device(f"cuda:{hooked}" if isinstance(hooked, int) else hooked)
    return dev


def to_device(values, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A host list -> a tensor on `device` without waiting for the device's queued work: on CUDA through
    pinned memory and a non-blocking copy (a plain `torch.tensor(list, device=cuda)` synchronises)."""
    t = torch.tensor(values, dtype=dtype)
    if torch.device(device).type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def _self_attention_layers(cache) -> list:
    """The cache layers that hold the decoder's own tokens (not an encoder-decoder's cross-attention)."""
    return (cache.self_attention_cache if isinstance(cache, EncoderDecoderCache) else cache).layers


def batch_layout(model: PreTrainedModel) -> str:
    """How a batch of this model is decoded (cached on the model as `_bild_layout`)."""
    cached = getattr(model, "_bild_layout", None)
    if cached is None:
        if not _plain_attention(model):
            cached = "rows"
        elif capabilities(model).takes_positions and _holes_are_ignored(model):
            cached = "holes"
        else:
            cached = "aligned" if _alignment_is_exact(model) else "rows"
        model._bild_layout = cached
    return cached


def _finite(logits: torch.Tensor) -> bool:
    """No NaN, no +inf, and some finite value (-inf alone is a masked token)."""
    return not bool(logits.isnan().any() or logits.isposinf().any()) and bool(logits.isfinite().any())


def _close(plain: torch.Tensor, other: torch.Tensor, dtype: torch.dtype) -> bool:
    """A probe's two logit vectors agree, up to the dtype's rounding (relative to the logits' scale); non-finite
    logits agree with nothing."""
    if not (_finite(plain) and _finite(other)):
        return False
    tol = (1e-3 if dtype == torch.float32 else 3e-2) * float(plain.abs().max().clamp(min=1.0))
    return bool(torch.allclose(plain, other, rtol=0, atol=tol))


def _plain_attention(model: PreTrainedModel) -> bool:
    """Every layer a full-attention `DynamicLayer` with no window applied by slot index: slots can then be
    masked or moved (the probes below check that the model agrees)."""
    cfg = model.config
    layers = DynamicCache(config=cfg).layers
    if any(type(layer).__name__ != "DynamicLayer" for layer in layers):
        return False  # sliding-window, linear-attention / convolution layers
    if "local" in (getattr(cfg, "attention_layers", None) or []):
        return False  # gpt-neo's slot-indexed local window
    if getattr(cfg, "sliding_window", None) and getattr(cfg, "use_sliding_window", True):
        return False  # a window applied through the mask on plain layers (Moshi): it counts slots
    return True


@torch.no_grad()
def _holes_are_ignored(model: PreTrainedModel) -> bool:
    """Feed 4 tokens in two cached steps as the engine does, once plainly ([t1 t2], [t3 t4]) and once with
    a masked slot after t1 ([t1 _ t2], [t3 t4]) at the same positions; the last logits must agree. Some
    models take `position_ids` yet derive positions or biases from the slot index or the cache length
    (BartForCausalLM, TrOCR, Whisper's decoder, GIT, Moshi). Checked once per model."""
    cached = getattr(model, "_bild_holes_ok", None)
    if cached is not None:
        return cached
    t, dev = _probe_tokens(model, 4), execution_device(model)

    arg = capabilities(model).cache_arg

    def run(first, first_mask, first_pos):
        cache = DynamicCache(config=model.config)
        mask = torch.tensor([first_mask], device=dev)
        model(input_ids=torch.tensor([first], device=dev), attention_mask=mask,
              position_ids=torch.tensor([first_pos], device=dev), use_cache=True, **{arg: cache})
        mask = torch.cat([mask, torch.ones(1, 2, dtype=mask.dtype, device=dev)], 1)
        out = model(input_ids=torch.tensor([t[2:]], device=dev), attention_mask=mask,
                    position_ids=torch.tensor([[2, 3]], device=dev), use_cache=True, **{arg: cache})
        return out.logits[0, -1].float()
    try:
        plain = run(t[:2], [1, 1], [0, 1])
        holed = run([t[0], 0, t[1]], [1, 0, 1], [0, 1, 1])
    except Exception:  # noqa: BLE001 - a model that cannot even run this cannot take holes
        ok = False
    else:
        ok = _close(plain, holed, model.dtype)
    model._bild_holes_ok = ok
    return ok


@torch.no_grad()
def _alignment_is_exact(model: PreTrainedModel) -> bool:
    """The "aligned" layout as the engine runs it, on two rows: row 0 feeds [t1 t2 t1], row 1 [t1 t2 _]
    (a masked slot at the end); the cache is re-packed (row 1 becomes [_ t1 t2]); both feed [t3 t4]. Row 1's
    last logits must equal those of [t1 t2], [t3 t4] alone. True for relative-position models (T5's bias
    sees slot distances, which re-packing keeps equal to token distances; ALiBi over slots), false where
    positions come from the slot index (BART, Marian, Pegasus: learned or sinusoidal positions from the
    cache length). Checked once per model."""
    t, dev = _probe_tokens(model, 4), execution_device(model)
    try:
        def run(first, valid):
            a = ModelAdapter(model)
            a.__dict__["layout"] = "aligned"
            B = len(first)
            enc = a.encode(torch.tensor([t[:3]] * B, device=dev), None) if a.is_encoder_decoder else None
            a.start(B, dev, enc)
            a.feed(torch.tensor(first, device=dev), valid, keep=1)
            return a.feed(torch.tensor([t[2:]] * B, device=dev), [[True, True]] * B, keep=1)[-1, -1]
        plain = run([t[:2]], [[True, True]])
        packed = run([t[:2] + [t[0]]] * 2, [[True, True, True], [True, True, False]])
    except Exception:  # noqa: BLE001 - a model that cannot run this cannot take the layout
        return False
    return _close(plain, packed, model.dtype)


# a feed of n tokens (> 0) or a rollback of -n tokens (<= 0; 0 settles): the loop's operations on one model (a
# prefill, verify passes, single draft steps, rollbacks into a verify pass and across draft steps)
ROLLBACK_OPS = (5, 3, -2, 1, 1, 1, -2, 4, 0, 1, 2, -2, 1, 3, -3, 1)


def cache_layer_kinds(model: PreTrainedModel) -> set[str]:
    """The class names of the layers of a fresh cache for this model (the decoder's, for encoder-decoders)."""
    return {type(layer).__name__ for layer in _self_attention_layers(new_cache(model))}


@torch.no_grad()
def rollback_is_exact(model: PreTrainedModel) -> bool:
    """Whether the engine rolls this model's cache back exactly: `ROLLBACK_OPS` run through a `ModelAdapter`
    (the engine's own feeds and crops, recurrent states recorded as it records them) must give, at every fed
    position, the logits of an uncached forward over the tokens kept. Run for caches with layers other than
    full-attention and sliding-window ones (linear-attention and state-space layers, and kinds bild has not
    seen); cached on the model."""
    cached = model.__dict__.get("_bild_rollback_ok")
    if cached is not None:
        return cached
    dev, vocab = execution_device(model), int(model.config.get_text_config().vocab_size)
    g = torch.Generator().manual_seed(0)
    ok = True
    try:
        a = ModelAdapter(model)
        a.times = None  # the probe's forwards are no measurement
        a.__dict__["layout"] = "rows"
        seq: list[int] = []
        enc = None
        if a.is_encoder_decoder:
            enc = a.encode(torch.tensor([_probe_tokens(model, 3)], device=dev), None)
        a.start(1, dev, enc)
        for op in ROLLBACK_OPS:
            if op <= 0:
                del seq[len(seq) + op:]
                a.keep_first([len(seq)])
                continue
            new = torch.randint(3, max(vocab - 1, 4), (op,), generator=g).tolist()
            got = a.feed(torch.tensor([new], device=dev), [[True] * op], keep=op)[0]
            seq += new
            inputs = _probe_inputs(model, seq)
            if enc is not None:
                inputs["encoder_outputs"] = enc["encoder_outputs"]
            want = model(**inputs, use_cache=False).logits[0, -op:].float()
            if not all(_close(w, x, model.dtype) for w, x in zip(want, got)):
                ok = False
                break
    except Exception:  # noqa: BLE001 - a cache this release cannot roll back (or feed after a crop)
        ok = False
    model.__dict__["_bild_rollback_ok"] = ok
    return ok


# families with a recurrent state (linear-attention / state-space layers) that the engine decodes exactly from this
# transformers release on, the first that records recurrent states for `crop` (measured by tests/test_families.py
# on the releases CI runs; the family test fails where this table and the probes disagree)
RECURRENT_EXACT_FROM = {t: "5.25.0" for t in (
    "bailing_hybrid", "falcon_h1", "granitemoehybrid", "kimi_linear", "mamba2", "nemotron_h", "olmo_hybrid",
    "qwen3_5_moe_text", "qwen3_5_text", "qwen3_next", "zamba2")}


def rollback_problem(model: PreTrainedModel) -> str:
    """Why the engine cannot roll this model's cache back on the installed transformers ("" if it can)."""
    kinds = cache_layer_kinds(model)
    if kinds <= PLAIN_LAYERS or rollback_is_exact(model):
        return ""
    return (f"its cache holds {', '.join(sorted(kinds - PLAIN_LAYERS))} layers (a recurrent, convolution or "
            "state-space state), and the engine's rollback of them (transformers' recorded states and `crop`) "
            f"does not give the logits of an uncached forward on transformers {transformers.__version__}")


def working_release(model: PreTrainedModel) -> str:
    """For a refused model with a recurrent state: which transformers release decodes its family exactly."""
    if cache_layer_kinds(model) <= PLAIN_LAYERS:
        return ""
    first = RECURRENT_EXACT_FROM.get(model.config.model_type)
    if first is None:
        return (f"; no transformers release bild was tested with (up to {TRANSFORMERS_NEWEST}) rolls this family's "
                "state back exactly")
    if _release(transformers.__version__) < _release(first):
        return (f"; transformers {first} or later rolls its recurrent state back and bild decodes it exactly there "
                f"(`pip install 'transformers>={first}'`)")
    return f" (bild decoded this family exactly on transformers {first})"


# families checked and found wrong under the draft-verify loop (tests/test_families.py), with the reason
_REFUSED_TYPES = {
    "prophetnet": "it predicts n-grams over a decoder that takes one cached token at a time, so several drafts "
                  "cannot be verified in one forward",
    "xlm-prophetnet": "it predicts n-grams over a decoder that takes one cached token at a time, so several "
                      "drafts cannot be verified in one forward",
    "fsmt": "its decoder builds the causal mask only without a cache, so the tokens of a cached multi-token "
            "verify pass see each other",
    "cpmant": "its attention over the cache fails on a multi-token verify pass",
    "moshi": "its decoder applies a full causal mask over sliding-window cache layers, so even its own generate "
             "differs with and without a cache",
}


# encoder-decoders whose encoder takes something other than token ids (`main_input_name`), checked exact against
# their own generate (tests/test_generate_fidelity.py); the others (pixel_values: VisionEncoderDecoder, Donut,
# Pix2Struct; Speech2Text, SpeechEncoderDecoder) are refused
_CHECKED_ENCODER_INPUTS = {"whisper": "input_features"}


def check_model(model: PreTrainedModel, role: str) -> None:
    """Refuse, before any work, a model the engine cannot decode correctly."""
    name = type(model).__name__
    reason = _REFUSED_TYPES.get(model.config.model_type)
    if reason:
        raise ValueError(f"`{role}` ({name}) is not supported: {reason}")
    enc_input = getattr(model, "main_input_name", "input_ids")
    if (model.config.is_encoder_decoder and enc_input != "input_ids"
            and _CHECKED_ENCODER_INPUTS.get(model.config.model_type) != enc_input):
        raise ValueError(f"`{role}` ({name}) is not supported: its encoder takes `{enc_input}`, not token ids, and "
                         "the engine is checked exact on such encoders for Whisper only")
    if _unrollable_window(model):
        raise ValueError(f"`{role}` ({name}) is not supported with this transformers release: its cache mixes "
                         "sliding-window state into other layers, and this release cannot roll sliding-window "
                         "layers back (bild.adapters.window_rollback_works; 5.24 can)")
    caps = capabilities(model)
    if caps.cache_problem == NON_FINITE:
        raise ValueError(f"`{role}` ({name}) {NON_FINITE}: check its weights and dtype (a float16 model that "
                         "overflows: load it in float32 or bfloat16)")
    if caps.cache_arg is None:
        raise ValueError(f"`{role}` ({name}) {caps.cache_problem}: the engine feeds each model only the tokens it "
                         "has not read, so it cannot decode this model" +
                         (" with this transformers release" if caps.cache_problem == NOT_CONTINUED else "") +
                         working_release(model))
    problem = rollback_problem(model)
    if problem:
        raise ValueError(f"`{role}` ({name}, model type {model.config.model_type!r}) cannot be decoded exactly: "
                         f"{problem}{working_release(model)}")


def encoder_rows(encoder_kwargs: dict, take) -> dict:
    """Encoder kwargs (`encoder_outputs`, `attention_mask`) with `take` applied to the batch dimension of
    both: one row of a batch (`lambda x: x[r : r + 1]`, for batches decoded row by row over one batched
    encoder pass) or each row repeated (`repeat_interleave`, for num_drafts)."""
    enc, mask = encoder_kwargs["encoder_outputs"], encoder_kwargs.get("attention_mask")
    return {"encoder_outputs": type(enc)(last_hidden_state=take(enc.last_hidden_state)),
            "attention_mask": None if mask is None else take(mask)}


def vocab_width(model: PreTrainedModel) -> int:
    """Width of the model's logits."""
    head = model.get_output_embeddings()
    return int(head.weight.shape[0]) if head is not None else int(model.config.vocab_size)
