"""Tree drafts (`draft_tree=k`): the small model proposes k candidates at the first draft position, each
continued into a chain, and the large model checks the whole tree in ONE forward pass under a tree attention
mask; the longest accepted path is kept in both caches.

Tree shape: k chains sharing the committed prefix. Greedy: the small model's top-k first tokens, each continued
greedily. Sampling: k first tokens drawn i.i.d. from q, each continued by sampling q: k i.i.d. drafts, which
SpecInfer's multi-draft rule (Miao et al. 2024) / Yin et al.'s Alg. 4 (`verify_batch_drafts`) verifies
losslessly. Greedy verification follows the chain whose first token is the large model's argmax (top-k
tokens are distinct: at most one) while its drafts equal the argmax. The depth is the draft policy's (its
budget, and its stop rule read on chain 0's confidence). Drafting runs one small-model forward per depth for
all k frontier nodes (tree mask too).

A tree forward (`TreeCache.feed`) appends nodes to a `ModelAdapter`'s cache (batch 1): node i sees the
committed prefix (the adapter's slot mask) and its ancestors, at position (prefix tokens + depth), through a
4D additive float mask (0 / dtype min) that transformers' mask builders pass on unchanged (5.17 - 5.25,
`masking_utils._preprocess_mask_arguments`) and both eager and sdpa attention add. After the verdict
`TreeCache.keep` moves the accepted path's KV entries next to the prefix (an index_select along the sequence
axis of each `DynamicLayer`) and drops the rest: nothing accepted is recomputed.

Served: batch 1, decoder-only models whose caches hold only full-attention `DynamicLayer`s, that take
`position_ids`, and whose tree forward gives the logits of uncached forwards (`tree_mask_is_exact`, a probe
cached on the model), with verification "exact". `tree_problem` says why a model is not served.
"""

from __future__ import annotations

import weakref

import torch

from . import online_costs
from .adapters import ModelAdapter, _plain_attention
from .batch import CacheReader
from .caches import _close, _self_attention_layers
from .decoding import DraftVerifyLoop
from .devices import execution_device, to_device
from .policies import RoundRecord
from .probes import _probe_tokens, capabilities
from .proposers import ModelProposer, Proposal, judged_accepted
from .verification import verify_batch_drafts, verify_exact_greedy


class TreeCache:
    """Tree nodes appended to a `ModelAdapter`'s cache (batch 1) beyond its committed prefix (`base` slots).
    Node j sits in slot base + j; `path[j]` its ancestors' node indices and its own, `pos[j]` its position."""

    def __init__(self, adapter: ModelAdapter):
        if len(adapter.slots) != 1:
            raise RuntimeError("tree drafts run at batch 1")
        self.a, self.base, self.root_pos = adapter, adapter.length, adapter.n_valid[0]
        self.path: list[list[int]] = []
        self.pos: list[int] = []

    def feed(self, ids: torch.Tensor, parents: list[int]) -> torch.Tensor:
        """ids [n] (device), parents[i] the node token i continues (-1: the committed prefix; a node fed
        earlier, in this call or before). Returns float32 logits [n, V] after each token."""
        a, n, start = self.a, len(parents), len(self.path)
        for i, p in enumerate(parents):
            self.path.append((self.path[p] if p >= 0 else []) + [start + i])
            self.pos.append(self.pos[p] + 1 if p >= 0 else self.root_pos)
        T = start + n
        sees = [[False] * T for _ in range(n)]
        for i in range(n):
            for j in self.path[start + i]:
                sees[i][j] = True
        dev = a.device  # (a host list through `to_device`: on CUDA no wait for queued work)
        visible = torch.cat([a.mask[0, : self.base].expand(n, -1), to_device(sees, dev, torch.bool)], dim=1)
        dtype = a.model.dtype if a.model.dtype.is_floating_point else torch.float32
        mask = torch.zeros(n, visible.shape[1], dtype=dtype, device=dev).masked_fill(~visible, torch.finfo(dtype).min)
        kwargs = {
            a.caps.cache_arg: a.cache,
            "use_cache": True,
            "input_ids": ids.reshape(1, n),
            "attention_mask": mask[None, None],
            "position_ids": to_device([self.pos[start:]], dev),
        }
        if a.caps.logits_to_keep:
            kwargs["logits_to_keep"] = n
        a.mask = torch.cat([a.mask, torch.ones(1, n, dtype=torch.bool, device=dev)], dim=1)
        a.length += n
        a.tokens_fed += n
        logits = a.run_forward(kwargs, 1, n, n)[0]
        a.prefill = False
        return logits

    def keep(self, nodes: list[int]) -> None:
        """Keep the nodes `nodes` (a path, root first) after the prefix, in that order; drop the other nodes."""
        a, base, k = self.a, self.base, len(nodes)
        if nodes != list(range(k)):  # move the kept entries next to the prefix (only they are copied)
            src = to_device([base + j for j in nodes], a.device)
            for layer in _self_attention_layers(a.cache):
                for name in ("keys", "values"):
                    t = getattr(layer, name)
                    t[..., base : base + k, :] = t.index_select(-2, src)
        a.cache.crop(base + k - a.length)
        a.mask = a.mask[:, : base + k]
        a.length = base + k
        a.slots[0] += list(range(base, base + k))
        a.n_valid[0] += k
        self.path, self.pos = [], []


# -- options and models ---------------------------------------------------------------------------------
TREE_OFF = (None, "off")


def check_draft_tree(draft_tree, verification: str, num_drafts: int, epsilon: float) -> int | str | None:
    """`draft_tree` -> k, "auto" or None (chains); a ValueError naming it for what trees cannot serve ("auto"
    where trees cannot serve the options: chains)."""
    if draft_tree in TREE_OFF:
        return None
    if draft_tree == "auto":
        return "auto" if num_drafts == 1 and verification == "exact" and not epsilon else None
    if isinstance(draft_tree, bool) or not isinstance(draft_tree, int) or draft_tree < 2:
        raise ValueError(
            f"`draft_tree` must be None, 'off', 'auto' or an integer k >= 2 (candidates per "
            f"branching), got {draft_tree!r}"
        )
    if num_drafts > 1:
        raise ValueError(
            "`draft_tree` cannot be combined with `num_drafts` > 1: a tree already holds several "
            "drafts per prompt (pass one of them)"
        )
    if verification != "exact" or epsilon:
        raise ValueError(
            f"`draft_tree` needs verification='exact' without `uno_epsilon` / `opt_epsilon` "
            f"(got verification={verification!r}): trees are verified by the lossless rules only"
        )
    return draft_tree


def trees_served(small, large, lookup: bool) -> bool:
    """draft_tree="auto": whether these models (and drafter) can take trees; if not, it drafts chains."""
    from .feature_draft import is_feature_draft

    return (
        small is not None
        and not lookup
        and not is_feature_draft(small)
        and not tree_problem(small)
        and not tree_problem(large)
    )


def check_tree_models(small, large, lookup: bool) -> None:
    """Refuse, before any work, tree drafts the models cannot serve."""
    if small is None or lookup:
        raise ValueError(
            "`draft_tree` needs a small model as the drafter, without prompt lookup (`prompt_lookup_num_tokens`)"
        )
    from .feature_draft import is_feature_draft

    if is_feature_draft(small):
        raise ValueError("`draft_tree` is not supported with a feature draft (EAGLE) as the small model")
    for role, model in (("small_model", small), ("large_model", large)):
        problem = tree_problem(model)
        if problem:
            raise ValueError(
                f"`draft_tree` cannot run on `{role}` ({type(model).__name__}): {problem}; use draft_tree=None (chains)"
            )


# -- which models take tree drafts ------------------------------------------------------------------------
def tree_problem(model) -> str:
    """Why tree drafts cannot run on this model ("" if they can)."""
    if model.config.is_encoder_decoder:
        return "it is an encoder-decoder model"
    if not _plain_attention(model):  # the layers a config asks for, whatever cache this release builds
        return (
            "its attention is not full attention over plain cache layers (a sliding or local window, or a "
            "recurrent / linear-attention state), which a tree mask would override or cannot express"
        )
    if not capabilities(model).takes_positions:
        return "its forward takes no per-token `position_ids`"
    if not tree_mask_is_exact(model):
        return (
            "a tree forward under a 4D attention mask does not give the logits of separate forwards "
            "(bild.tree.tree_mask_is_exact)"
        )
    return ""


@torch.no_grad()
def tree_mask_is_exact(model) -> bool:
    """A tree forward as the engine runs it, against uncached forwards over each node's path: a prompt with a
    masked (padding) slot, a tree of 4 nodes in one pass (two branches of two), one more node fed later, the
    path of the second branch kept (its entries moved), then a plain feed. Cached on the model."""
    cached = model.__dict__.get("_bild_tree_ok")
    if cached is not None:
        return cached
    dev = execution_device(model)
    t = _probe_tokens(model, 9)
    prefix, (x, y, z, w, v, u) = t[:3], t[3:]
    ok = True

    def want(seq):
        return model(input_ids=torch.tensor([seq], device=dev), use_cache=False).logits[0, -1].float()

    try:
        a = ModelAdapter(model)
        a.times = None  # no measurement
        a.__dict__["layout"] = "holes"
        a.start(1, dev)
        a.feed(torch.tensor([[t[0]] + prefix], device=dev), [[False] + [True] * 3], keep=1)
        tree = TreeCache(a)
        got = tree.feed(torch.tensor([x, y, z, w], device=dev), [-1, -1, 0, 1])
        paths = [[x], [y], [x, z], [y, w]]
        ok = all(_close(want(prefix + p), g, model.dtype) for p, g in zip(paths, got))
        got = tree.feed(torch.tensor([v], device=dev), [3])[0]
        ok = ok and _close(want(prefix + [y, w, v]), got, model.dtype)
        tree.keep([1, 3])
        got = a.feed(torch.tensor([[u]], device=dev), [[True]], keep=1)[0, -1]
        ok = ok and _close(want(prefix + [y, w, u]), got, model.dtype)
    except Exception:  # noqa: BLE001 - a model that cannot take a 4D mask, positions or this cache
        ok = False
    model.__dict__["_bild_tree_ok"] = ok
    return ok


# -- the loop --------------------------------------------------------------------------------------------
class TreeLoop(DraftVerifyLoop):
    """`DraftVerifyLoop` (batch 1) whose rounds draft a tree of `width` chains and verify it in one pass.
    Host reads: one per draft depth, one per round (the verdict)."""

    def __init__(self, *args, width: int | str, **kwargs):
        super().__init__(*args, **kwargs)
        self.chooser = WidthChooser.of(self.small, self.large, self.do_sample) if width == "auto" else None
        self.width = width if self.chooser is None else WidthChooser.WIDTHS[-1]
        self.costs = None

    def _round_body(self) -> Proposal:
        if self.chooser is not None:
            if self.costs is None:
                self.costs = online_costs.learned_costs(self.small.model, self.large.model, 1)
            self.width = self.chooser.pick()
        st, k = self.state, self.width
        if st.B != 1 or not isinstance(self.proposer, ModelProposer):
            raise RuntimeError("tree drafts run at batch 1 with the small model as the proposer")
        prop = self.proposer
        budget, probing = prop.budgets(st, None)
        drafts, conf, qs, first_conf, small_tree, steps = self._draft(prop, budget[0])
        D = len(drafts[0])
        chosen, a, nxt, processed, raw, width = self._verify(drafts, qs)
        before = st.cur[0]
        path = drafts[chosen][:a]
        source = "small" if D else ""
        committed = self._commit(
            [path + [nxt]], processed[chosen : chosen + 1, : a + 1], raw[chosen : chosen + 1, : a + 1], [source], [a]
        )
        # both caches keep the committed prefix and the accepted path (the large model's token is read next round)
        self.large_tree.keep(list(range(self.unread)) + [self.unread + d * k + chosen for d in range(a)])
        self.scorer.reader.read[0] = before + a
        if small_tree is not None:
            fed = min(a, steps - 1)  # the small model read the chains' first steps - 1 tokens
            small_tree.keep([d * k + chosen for d in range(fed)])
            prop.reader.read[0] = before + fed
        if steps:
            judged, accepted = judged_accepted([D], [a], committed)
            prop.policy.learn(
                RoundRecord(
                    conf=[conf[chosen][:D]],
                    first_conf=[first_conf],
                    drafted=[D],
                    judged=judged,
                    accepted=accepted,
                    committed=committed,
                    small_steps=steps,
                    width=width,
                )
            )
        if self.chooser is not None:
            c = self.costs
            cost = steps * c.small + c.verify_cost(width) + (c.overhead if steps else 0.0)
            self.chooser.learn(k, committed[0], cost)
        out = Proposal([path + drafts[chosen][a:]], [D], [source], budget, probing)
        self._count(out, [a], committed)
        return out

    def _draft(self, prop: ModelProposer, budget: int):
        """Up to `budget` depths of k chains. Returns the chains (host lists, all of one depth D), their
        confidences, q per depth ([k, V] each, sampling), the first step's top probability, the small
        model's `TreeCache` (None: no forward ran) and the small forwards run."""
        st, k, greedy = self.state, self.width, not self.do_sample
        drafts, conf, qs = [[] for _ in range(k)], [[] for _ in range(k)], []
        if budget <= 0:
            return drafts, conf, qs, None, None, 0
        logits, offset, _, n = prop.reader.catch_up()
        probs = prop.processors(CacheReader.last(logits, offset, n), [[]]).softmax(-1)  # [1, V]
        bad = probs.isnan().any(-1)
        probs = probs.nan_to_num(nan=1.0 / probs.shape[-1])
        tok = probs[0].topk(k).indices if greedy else torch.multinomial(probs[0], k, replacement=True)
        probs = probs.expand(k, -1)
        tree, steps, first_conf = TreeCache(prop.adapter), 1, None
        live = torch.ones(1, dtype=torch.bool, device=st.device)
        for j in range(budget):
            top = probs.max(-1).values  # [k] each chain's confidence (the policy reads chain 0's)
            keep, more = prop.policy.step(j, top[:1], live)
            keep, more = keep & ~bad, more & ~bad
            tok_l, top_l, keep_l, more_l, bad_l = _read(tok, top, keep, more, bad)  # one read per depth
            if self.clock is not None:  # the depth's forward has run (an asynchronous device)
                self.clock.read()
            if first_conf is None:
                first_conf = None if bad_l else top_l[0]
            if bad_l:
                prop._non_finite([True])
            if not keep_l:
                if not bad_l:
                    self.stats.fallbacks += 1
                break
            for ch in range(k):
                drafts[ch].append(int(tok_l[ch]))
                conf[ch].append(top_l[ch])
            qs.append(probs)
            if not more_l or j + 1 >= budget:
                break
            parents = [-1] * k if j == 0 else [(j - 1) * k + ch for ch in range(k)]
            logits = tree.feed(tok, parents)  # [k, V]
            steps += 1
            if len(prop.processors):
                logits = torch.cat([prop.processors(logits[ch : ch + 1], [drafts[ch]]) for ch in range(k)])
            probs = logits.softmax(-1)
            bad = probs.isnan().any(-1).any()[None]
            probs = probs.nan_to_num(nan=1.0 / probs.shape[-1])
            tok = probs.argmax(-1) if greedy else torch.multinomial(probs, 1).squeeze(-1)
        return drafts, conf, qs, first_conf, tree, steps

    def _verify(self, drafts: list[list[int]], qs: list[torch.Tensor]):
        """The large model reads its unread committed tokens and the whole tree in one pass. Returns the chain
        followed, the drafts kept, the large model's next token, processed and raw logits [k, D+1, V] along each
        chain (column j: the distribution for draft j) and the tree's width (nodes)."""
        st, k, D = self.state, self.width, len(drafts[0])
        reader = self.scorer.reader
        r0 = reader.read[0]
        m = self.unread = st.cur[0] - r0
        ids = st.seqs[0, r0 : st.cur[0]]
        if D:
            ids = torch.cat([ids, to_device([drafts[ch][d] for d in range(D) for ch in range(k)], st.device)])
        parents = list(range(-1, m - 1)) + [
            m - 1 if d == 0 else m + (d - 1) * k + ch for d in range(D) for ch in range(k)
        ]
        self.large_tree = TreeCache(self.large)
        logits = self.large_tree.feed(ids, parents)  # [m + k*D, V]
        self.stats.verify_widths.append(m + k * D)
        self.stats.verify_lengths.append(m + k * D)
        idx = to_device([[m - 1] + [m + d * k + ch for d in range(D)] for ch in range(k)], logits.device)
        raw = logits[idx]  # [k, D+1, V]
        processed = raw
        if len(self.scorer.processors):
            processed = torch.stack(
                [
                    torch.cat([self.scorer.processors(raw[ch, j : j + 1], [drafts[ch][:j]]) for j in range(D + 1)])
                    for ch in range(k)
                ]
            )
        if not D:
            nxt = int(self._choose(processed[:1, 0]).tolist()[0])  # the round's one read
            if self.clock is not None:
                self.clock.read()
            return 0, 0, nxt, processed, raw, 0
        dt = to_device(drafts, st.device)  # [k, D]
        n_draft = torch.full((k,), D, dtype=torch.long, device=st.device)
        if self.do_sample:
            q = torch.stack(qs, 1)  # [k, D, V]
            chosen, n_acc, nxt = verify_batch_drafts(dt[None], n_draft[None], processed.softmax(-1)[None], q[None])
            chosen, n_acc, nxt = torch.stack([chosen, n_acc, nxt]).reshape(-1).tolist()  # the round's one read
        else:
            n_acc, nxt = verify_exact_greedy(dt, n_draft, processed)  # per chain; at most one passes its first
            best = n_acc.argmax()
            chosen, n_acc, nxt = torch.stack([best, n_acc[best], nxt[best]]).tolist()  # the round's one read
        if self.clock is not None:  # the verify pass has run
            self.clock.read()
        return chosen, n_acc, nxt, processed, raw, k * D


class WidthChooser:
    """draft_tree="auto": each round drafts a chain (width 1) or a tree of `WIDTHS[-1]` chains, whichever has
    committed more tokens per unit of cost (`DraftCosts`, learned like the adaptive policy's: the small
    model's steps, the verify pass of the round's nodes, the round overhead; exponentially weighted). Each
    width is tried `EXPLORE` rounds first, and the other one every `EVERY`-th round after. The width is chosen
    from past rounds only, so either choice keeps the round exact. Shared per (large model, small model,
    sampling or not) in the process."""

    WIDTHS = (1, 4)
    EXPLORE, EVERY, DECAY = 3, 8, 0.97
    _shared: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def __init__(self):
        self.tokens = {w: 0.0 for w in self.WIDTHS}
        self.cost = {w: 0.0 for w in self.WIDTHS}
        self.rounds = {w: 0 for w in self.WIDTHS}
        self.n = 0

    @classmethod
    def of(cls, small: ModelAdapter, large: ModelAdapter, do_sample: bool) -> WidthChooser:
        per_large = cls._shared.setdefault(large.model, {})
        key = (id(small.model), do_sample)
        if key not in per_large:
            per_large[key] = cls()
        return per_large[key]

    def rate(self, w: int) -> float:
        return self.tokens[w] / self.cost[w] if self.cost[w] > 0 else 0.0

    def pick(self) -> int:
        untried = [w for w in self.WIDTHS if self.rounds[w] < self.EXPLORE]
        if untried:
            return untried[0]
        self.n += 1
        best = max(self.WIDTHS, key=self.rate)
        if self.n % self.EVERY == 0:
            return next(w for w in self.WIDTHS if w != best)
        return best

    def learn(self, width: int, committed: int, cost: float) -> None:
        if width not in self.tokens:
            return
        self.tokens[width] = self.DECAY * self.tokens[width] + committed
        self.cost[width] = self.DECAY * self.cost[width] + cost
        self.rounds[width] += 1


def _read(tok, top, keep, more, bad):
    """One host read of a draft depth: tokens [k], top probabilities [k], the policy's keep / more and the
    non-finite flag ([1] each)."""
    k = tok.shape[0]
    flat = torch.cat([tok.double(), top.double(), keep.double(), more.double(), bad.double()]).tolist()
    return flat[:k], flat[k : 2 * k], bool(flat[2 * k]), bool(flat[2 * k + 1]), bool(flat[2 * k + 2])
