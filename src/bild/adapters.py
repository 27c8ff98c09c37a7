"""One adapter per model, and how a batch is laid out in its cache.

The model layer (docs/architecture.md): `bild.caches` builds the caches and records what a rollback needs,
`bild.probes` finds how a model's forward is called, `bild.families` decides which models decode exactly
(refusals, the rollback probe), `bild.timing` keeps the forwards' times; this module holds `ModelAdapter` and
the three batch layouts. Family quirks stay in these modules.

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

import torch
from transformers import DynamicCache, PreTrainedModel

from . import caches, timing
from .bild_warnings import moved_names

# names that lived here up to 0.12, re-exported so that `bild.adapters.X` keeps working (their homes: devices.py,
# caches.py, probes.py; families.py's rollback probe and refusals are attached by bild/__init__.py)
from .caches import (  # noqa: F401,E402
    CACHE_ARGS,
    PLAIN_LAYERS,
    _close,
    _finite,
    _self_attention_layers,
    _unrollable_window,
    _window_layers,
    _window_ops_exact,
    cache_layer_kinds,
    new_cache,
    record_past,
    state_layers,
    window_rollback_works,
)
from .devices import execution_device, to_device
from .probes import (  # noqa: F401,E402
    NON_FINITE,
    NOT_CONTINUED,
    NOT_FILLED,
    Capabilities,
    _accepts,
    _cached_tokens,
    _probe_cache_arg,
    _probe_inputs,
    _probe_logits_to_keep,
    _probe_positions,
    _probe_tokens,
    capabilities,
)
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
        self.times = timing.model_times(model)  # forwards' host times feed the shared cost estimates
        self.seconds = 0.0  # host time in forwards, where timed (the loop subtracts it from a round's time)
        self.read_clock = None  # an asynchronous device's forwards are timed at the host reads (`timing.ReadClock`)
        self.vocab = token_index(model, execution_device(model))  # a pruned head's (ids, V), or None

    @functools.cached_property
    def layout(self) -> str:
        """ "holes", "aligned" or "rows". Asked only for batches or padded prompts: the first time, it runs
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
        self.cache = caches.new_cache(self.model)
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
        logits = self.run_forward(kwargs, B, n, keep)
        if self.recorded:
            self.unsettled += n
            if self.prefill:  # never rolled back: its record goes now
                self._crop(0)
        self.prefill = False
        return logits

    def run_forward(self, kwargs: dict, B: int, n: int, keep: int) -> torch.Tensor:
        """The model on `kwargs` (B rows of n new tokens, already counted in `self.length`), timed for the cost
        estimates. Returns float32 logits [B, keep, V] of the last `keep` positions (full width for a pruned
        head too)."""
        t0 = timing.clock() if self.times is not None else 0.0
        out = self.model(**kwargs)
        logits = out.logits[:, -keep:].float()
        if self.vocab is not None:  # [B, keep, V_sub] -> [B, keep, V], the other tokens improbable
            logits = widen_logits(logits, *self.vocab)
        if self.read_clock is not None:  # not run yet: timed at the next host read
            self.read_clock.launched(self, B, n, t0, self.length > n)
        elif self.times is not None:
            dt = timing.clock() - t0
            self.seconds += dt
            if self.length > n:  # not the prefill
                self.times.record(B, n, dt)
        self.forwards += 1
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
            raise RuntimeError(
                f"bild: a {n}-token forward of {type(self.model).__name__} after {self.unsettled} "
                "tokens not yet settled by a rollback; its recurrent state could not be rolled back"
            )
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
            return False  # transformers' own generate, where this family's positions / window count it
        if self.length > self.COMPACT_AT * max(self.n_valid) + 4:
            return True
        if self.layout != "aligned":
            return False
        return any(s and (s[-1] != self.length - 1 or s[-1] - s[0] + 1 != len(s)) for s in self.slots)

    def compact(self) -> None:
        """Re-pack the cache: each row's tokens keep their order and move to the end (masked slots first),
        and slots masked in every row are dropped. Slot count becomes the longest row's token count."""
        L = max(self.n_valid)
        order = torch.argsort(self.mask.long(), dim=1, stable=True)[:, self.length - L :]  # [B, L]
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
        model(
            input_ids=torch.tensor([first], device=dev),
            attention_mask=mask,
            position_ids=torch.tensor([first_pos], device=dev),
            use_cache=True,
            **{arg: cache},
        )
        mask = torch.cat([mask, torch.ones(1, 2, dtype=mask.dtype, device=dev)], 1)
        out = model(
            input_ids=torch.tensor([t[2:]], device=dev),
            attention_mask=mask,
            position_ids=torch.tensor([[2, 3]], device=dev),
            use_cache=True,
            **{arg: cache},
        )
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


def encoder_rows(encoder_kwargs: dict, take) -> dict:
    """Encoder kwargs (`encoder_outputs`, `attention_mask`) with `take` applied to the batch dimension of
    both: one row of a batch (`lambda x: x[r : r + 1]`, for batches decoded row by row over one batched
    encoder pass) or each row repeated (`repeat_interleave`, for num_drafts)."""
    enc, mask = encoder_kwargs["encoder_outputs"], encoder_kwargs.get("attention_mask")
    return {
        "encoder_outputs": type(enc)(last_hidden_state=take(enc.last_hidden_state)),
        "attention_mask": None if mask is None else take(mask),
    }


def vocab_width(model: PreTrainedModel) -> int:
    """Width of the model's logits."""
    head = model.get_output_embeddings()
    return int(head.weight.shape[0]) if head is not None else int(model.config.vocab_size)


# names of 0.12 that moved to a module above this one (`bild_warnings.moved_names`)
_MOVED = {
    "check_model": "families",
    "rollback_is_exact": "families",
    "rollback_problem": "families",
    "working_release": "families",
    "RECURRENT_EXACT_FROM": "families",
    "ROLLBACK_OPS": "families",
    "_REFUSED_TYPES": "families",
    "_CHECKED_ENCODER_INPUTS": "families",
}
__getattr__ = moved_names(__name__, _MOVED)
