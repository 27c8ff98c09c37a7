"""Draft policies: when the small model stops drafting, and how long a draft may be.

The loop consults one `DraftPolicy` per generate call:

    begin(batch_size, costs)   start of a call (the policy's learned state persists across calls)
    budgets(remaining)         per row, how many tokens it may draft this round (0 = no draft)
    step(j, conf)              after draft step j: keep this token? draft another one? (per row)
    cut(conf, live)            for a candidate known whole before any check (prompt lookup): how much to keep
    learn(record)              after the verify pass: what the large model judged (a `RoundRecord`)
    no_draft(committed, width) a round in which this drafter drafted nothing

Policies:
    ThresholdPolicy    the BiLD paper's rule: fall back when the small model's top probability is below
                       `fallback_threshold`; at most `max_small_steps` drafts.
    HeuristicPolicy    the same fallback, with transformers' assisted-generation schedule for the draft
                       budget (+2 after a fully accepted draft, -1 after a rejection), capped.
    AdaptivePolicy     the default ("auto"): learns the acceptance probability of a draft per bin of the
                       small model's confidence and picks, per token, the choice that maximises expected
                       new tokens per unit of model time (costs measured once, or given). See its docstring.
    LookupPolicy       the adaptive rule for prompt lookup: acceptance per draft position, the whole candidate
                       cut to its best length against a per-width verify table, re-probes.
    RowwisePolicy      the adaptive rule per row and per call on timing-free costs ("auto" in the lossy modes).

Costs are `DraftCosts`: a small step and a verify pass over k drafts, in units of one large step.

Concurrent calls: a policy object may be shared by calls running at the same time (one generator used from
several threads, or the policies shared per pair of models). The engine never decides with the shared
object: `open(batch_size, costs)` gives the call its own copy ("session", begun), which holds every
per-call state and learns as the call runs; `close(session)` folds what it learned back, under a lock. Calls
one at a time behave exactly as if the shared object had been used directly.
"""

from __future__ import annotations

import copy
import math
import threading
from dataclasses import dataclass

import torch

from .devices import to_device


# -- costs ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DraftCosts:
    """Model-call costs in units of one large-model decoding step (at the batch size in use).

    small      one small-model decoding step
    verify[k]  one large forward over k drafts plus the last committed token (verify[0] = 1.0);
               beyond the table, extrapolated linearly from its last two entries
    overhead   what a drafting round costs beyond its model calls (sampling, bookkeeping, cache
               rollback), compared with a plain large step
    """

    small: float
    verify: tuple[float, ...]
    overhead: float = 0.0

    # A drafting round's overhead beyond its model calls, in large steps: the prior of the timing-free costs
    # (`RowwisePolicy`, GPUs) and of measured tables. On the 2-core CPU a round cost 0.40-0.46 large steps more
    # than its predicted model calls (controlled pair, linear verify prices, benchmarks/adaptive_policy.py,
    # 2026-11-23). On a CPU `bild.online_costs` replaces it with the rounds' own host time (0.11: 0.03-0.06
    # large steps on the SmolLM2 pair). Kept here because the lossy modes' text depends on it. Unmeasured on a GPU.
    ROUND_OVERHEAD = 0.4
    MAX_DRAFTS = 32  # verify table length of fitted costs
    # prompt lookup: a draft is a dictionary lookup on the host; a lookup round's host time beyond its forward
    # was 1.5-4.8 ms against 0.7-1.5 ms for a plain large step whose forward took 70-170 ms (SmolLM2 pair,
    # XSUM dev, 1 thread, 2026-11-29): ~0.02 large steps
    LOOKUP_STEP = 0.0
    LOOKUP_OVERHEAD = 0.02

    def for_lookup(self) -> DraftCosts:
        """These costs with prompt lookup's draft step and round overhead (the verify table kept)."""
        return DraftCosts(self.LOOKUP_STEP, self.verify, self.LOOKUP_OVERHEAD)

    def verify_cost(self, k: int) -> float:
        v = self.verify
        if k < len(v):
            return v[k]
        slope = v[-1] - v[-2] if len(v) > 1 else 0.0
        return v[-1] + slope * (k - len(v) + 1)

    @classmethod
    def from_ratio(cls, cost_ratio: float) -> DraftCosts:
        """The papers' model: a small step costs `cost_ratio` large steps, a verify pass costs one large
        step whatever its width (true on a GPU for short drafts, not on a CPU), and nothing else counts."""
        return cls(float(cost_ratio), (1.0, 1.0))

    @classmethod
    def from_table(cls, table, max_drafts: int | None = None) -> DraftCosts:
        """From a measured `bild.analysis.cost_model.CostTable` (seconds per call). Verify passes are fitted by
        verify[k] = 1 + s k (least squares, s >= 0) through the one-token step: timing noise between single
        widths would otherwise look like a marginal cost and cut drafts short or make them long."""
        step = table.large(1)
        pts = [(n - 1, t / step - 1.0) for n, t in table.large_forward.items() if n >= 2]
        ks = torch.tensor([k for k, _ in pts] or [1], dtype=torch.float64)
        extra = torch.tensor([v for _, v in pts] or [0.0], dtype=torch.float64)
        slope = max(0.0, float((ks * extra).sum() / (ks * ks).sum()))
        n = cls.MAX_DRAFTS if max_drafts is None else max_drafts
        return cls(table.small(1) / step, tuple(1.0 + slope * k for k in range(n + 1)), cls.ROUND_OVERHEAD)

    def as_dict(self) -> dict:
        return {
            "small": round(self.small, 4),
            "verify": [round(x, 3) for x in self.verify[:17]],
            "overhead": self.overhead,
        }


def expected_tokens(alpha: float, k: int) -> float:
    """Expected tokens of a round with k drafts of i.i.d. acceptance alpha: (1 - a^(k+1)) / (1 - a)."""
    return float(k + 1) if alpha >= 1.0 else (1.0 - alpha ** (k + 1)) / (1.0 - alpha)


def best_draft_length(alpha: float, costs: DraftCosts, cap: int) -> tuple[int, float]:
    """(k, rate) maximising expected tokens per unit of cost, rate = tokens / (k c_small + verify[k] + overhead),
    over k = 1..cap (the papers' expected-length formula with the measured verify cost)."""
    rates = [
        (expected_tokens(alpha, k) / (k * costs.small + costs.verify_cost(k) + costs.overhead), k)
        for k in range(1, cap + 1)
    ]
    rate, k = max(rates)
    return k, rate


# -- what a round did -------------------------------------------------------------------------------
@dataclass
class RoundRecord:
    """One round, per row (B rows, K draft slots), as host values (lists; tensors are accepted too): a
    policy decides on the host, so learning never waits on the device.

    conf       [B, K] small model's top probability at each own draft (columns >= drafted[r] unused)
    first_conf [B]    top probability at the row's first draft step, kept or not (None or nan: no step ran)
    drafted    [B]    own drafts sent to the large model (batch-fill drafts excluded)
    judged     [B]    own drafts the large model judged: up to and including the first rejection, and
                      no further than what the row committed
    accepted   [B]    own drafts committed
    committed  [B]    tokens committed this round (drafts and the large model's token)
    small_steps       small-model forwards this round;  width: drafts per row in the verify pass (K)
    """

    conf: list
    first_conf: list
    drafted: list
    judged: list
    accepted: list
    committed: list
    small_steps: int
    width: int

    def __post_init__(self):
        for name in ("conf", "first_conf", "drafted", "judged", "accepted", "committed"):
            x = getattr(self, name)
            if isinstance(x, torch.Tensor):
                setattr(self, name, x.tolist())


# -- policies ---------------------------------------------------------------------------------------
_LOCK = threading.RLock()  # guards the fork and the fold-back of every shared policy (both are short)


class DraftPolicy:
    """Interface. Subclasses override what they need; the default drafts nothing."""

    needs_costs = False
    probing = False  # this round only measures (the loop then judges greedy drafts exactly)

    def begin(self, batch_size: int, costs: DraftCosts | None = None) -> None:
        self.batch_size = batch_size

    # -- sessions: one per call, so that calls running at the same time share no per-call state -----------
    def open(self, batch_size: int, costs: DraftCosts | None = None) -> DraftPolicy:
        """A copy of this policy for one call, begun: the call decides and learns with it alone. Hand it back
        with `close` (what it learned is folded into this policy then)."""
        with _LOCK:
            session = self._fork()
            session._origin = getattr(self, "_version", 0)
        session.begin(batch_size, costs)
        return session

    def close(self, session: DraftPolicy) -> None:
        """Fold a finished session back: if no other session was folded since it was opened, this policy takes
        its state as is (calls one at a time: exactly as if they had used this object); otherwise `_merge`."""
        with _LOCK:
            version = getattr(self, "_version", 0)
            if session._origin == version:
                self.__dict__.update(self._state(session))
            else:
                self._merge(session)
            self._version = version + 1

    def _fork(self) -> DraftPolicy:
        """A copy whose containers are its own (the learned values are copied, not shared)."""
        session = copy.copy(self)
        session.__dict__ = {k: copy.copy(v) if isinstance(v, (list, dict)) else v for k, v in self.__dict__.items()}
        session._base = self._state(session)
        return session

    @staticmethod
    def _state(session: DraftPolicy) -> dict:
        return {
            k: copy.copy(v) if isinstance(v, (list, dict)) else v
            for k, v in session.__dict__.items()
            if k not in ("_origin", "_version", "_base")
        }

    def _merge(self, session: DraftPolicy) -> None:
        """Another call folded its session back while this one ran: by default the last call's state wins."""
        self.__dict__.update(self._state(session))

    def budgets(self, remaining: list[int]) -> list[int]:
        """remaining[r]: drafts row r may still write this call (0 for finished rows)."""
        return [0] * len(remaining)

    def step(self, j: int, conf: torch.Tensor, live: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """conf [B]: top probability of the token drafted at step j (0-based); live [B]: rows still writing
        their own draft (the others' answers are ignored). Returns (keep [B], more [B]):
        keep=False drops the token and ends the row's draft (a fallback); more=False keeps it and ends."""
        ones = torch.ones_like(conf, dtype=torch.bool)
        return ones, ones

    def cut(self, conf: torch.Tensor, live: torch.Tensor) -> torch.Tensor:
        """For a drafter whose whole candidate is known before any check (prompt lookup): conf [B, K] per
        candidate token, live [B, K] where row r has a j-th candidate token (a prefix). Returns keep [B, K], a
        prefix of each row's candidate. The default asks `step` token by token."""
        keep = torch.zeros_like(live)
        going = live[:, 0].clone() if live.shape[1] else live.new_zeros(live.shape[0])
        for j in range(live.shape[1]):
            lj = going & live[:, j]
            if not lj.any():
                break
            k, more = self.step(j, conf[:, j], lj)
            keep[:, j] = k & lj
            going = lj & k & more
        return keep

    def learn(self, record: RoundRecord) -> None:
        pass

    def no_draft(self, committed: list[int], width: int) -> None:
        """A round in which this policy's drafter drafted nothing (committed [B]: tokens the round committed;
        width: the verify pass's draft width, another drafter's). Default: nothing to learn."""

    def reset(self) -> None:
        """Forget what was learned."""

    def describe(self) -> dict:
        return {"policy": type(self).__name__}


class ThresholdPolicy(DraftPolicy):
    """BiLD's fixed rule: drop the token and fall back when conf < `fallback_threshold`; at most
    `max_small_steps` drafts per round."""

    def __init__(self, fallback_threshold: float, max_small_steps: int):
        self.threshold, self.max_steps = fallback_threshold, max_small_steps

    def budgets(self, remaining):
        return [min(self.max_steps, n) for n in remaining]

    def step(self, j, conf, live):
        return conf >= self.threshold, torch.ones_like(conf, dtype=torch.bool)

    def describe(self):
        return {"policy": "threshold", "fallback_threshold": self.threshold, "max_small_steps": self.max_steps}


class HeuristicPolicy(ThresholdPolicy):
    """The threshold rule with transformers' assisted-generation schedule: a row's budget starts at
    `max_small_steps`, shrinks by 1 after a rejection and grows by 2 after a fully accepted draft, never
    above `max_small_steps` (the cap) nor below 1."""

    def begin(self, batch_size, costs=None):
        super().begin(batch_size, costs)
        self.budget = [self.max_steps] * batch_size

    def budgets(self, remaining):
        return [min(b, n) for b, n in zip(self.budget, remaining)]

    def learn(self, rec):
        for r, (k, a, j) in enumerate(zip(rec.drafted, rec.accepted, rec.judged)):
            if k and a == k == self.budget[r]:
                self.budget[r] = min(self.max_steps, self.budget[r] + 2)
            elif k and j > a:
                self.budget[r] = max(1, self.budget[r] - 1)

    def describe(self):
        return {**super().describe(), "policy": "heuristic", "budgets": list(self.budget)}


class AdaptivePolicy(DraftPolicy):
    """Drafts while drafting pays, per token, from what verification has shown (the default, "auto").

    What it learns (kept across calls until `reset()`):
      acceptance   a(c): probability that the large model accepts a draft whose small-model top probability
                   falls in confidence bin c (10 bins), counted over judged drafts only, with a prior of 0.3
                   pseudo-drafts at the bin's centre (a calibrated draft);
      alpha        the overall acceptance rate (the papers' alpha), from the same counts;
      rate R       new tokens per unit of model cost achieved recently (moving sums), at least 1 (plain
                   large-model decoding is always available).
    How it decides, with costs c_small and verify[k] (`DraftCosts`, in large steps):
      draft length the cap k* maximises (1 - alpha^(k+1)) / (1 - alpha) / (k c_small + verify[k]) over
                   k <= max_small_steps (or 32 with "auto");
      per token    (renewal-reward / Dinkelbach: a round is worth its expected tokens minus R times its
                   cost) after drafting token j+1 with prefix-acceptance A = prod of a over kept drafts:
                   keep it if A a(c) >= R/B * (verify[j+1] - verify[j]) (it adds A a(c) expected tokens and
                   widens the verify pass); draft another if the batch's expected gain of the next token,
                   sum_r A_r a_r^2, is at least R (c_small + verify[j+2] - verify[j+1]);
      on / off     drafting is off while neither the formula's best rate beats plain decoding (rate > 1) nor
                   the first draft step is worth its cost (E_c[max(0, a(c) - R dv)] > R (c_small + overhead) over the
                   confidences seen at first steps). While off, a probe round every `probe_every` rounds
                   (doubling to 64 while probes fail) drafts `probe_length` tokens with no stopping rule,
                   so the estimates keep learning. The first rounds of a fresh policy are probes too, until
                   `warmup_drafts` drafts are judged or `WARMUP_ROUNDS` rounds have run (a weak draft, judged
                   about one draft per probe, would otherwise probe for a dozen rounds of a first call).
    With a numeric `fallback_threshold` the per-token rule is BiLD's (conf < threshold falls back) and
    only the draft length is chosen; with a numeric `max_small_steps` that is the cap.

    Decisions depend only on the counts and the costs, never on wall-clock time inside a run: with costs
    given, the same calls on a fresh policy make the same decisions.
    """

    needs_costs = True
    BINS = 10
    AUTO_CAP = 32
    PRIOR = 0.3  # pseudo-drafts per bin
    WARMUP_ROUNDS = 4  # most warm-up probe rounds of a fresh policy

    def __init__(
        self,
        fallback_threshold: float | None = None,
        max_small_steps: int | None = None,
        probe_length: int = 4,
        probe_every: int = 8,
        warmup_drafts: int = 12,
        prior: float | None = None,
    ):
        self.threshold, self.cap = fallback_threshold, max_small_steps or self.AUTO_CAP
        self.probe_length, self.probe_every, self.warmup = min(probe_length, self.cap), probe_every, warmup_drafts
        self.prior = prior  # acceptance every bin starts from; None: the bin's centre (a calibrated draft)
        self.reset()

    def reset(self):
        self.seen = [self.PRIOR] * self.BINS
        self.acc = [
            (self.prior if self.prior is not None else (b + 0.5) / self.BINS) * self.PRIOR for b in range(self.BINS)
        ]
        self.first = [0.0] * self.BINS  # confidences at first draft steps
        self._est = None  # acceptance per bin on the loop's device
        self.judged_total = 0
        self.tokens, self.cost = 1.0, 1.0  # moving sums behind the rate R
        self.on, self.length = True, min(self.cap, 4)
        self.interval, self.wait = self.probe_every, 0
        self.probing = self.warming = False
        self.warm_rounds = 0

    # -- estimates ----------------------------------------------------------------------------------
    @property
    def alpha(self) -> float:
        return sum(self.acc) / sum(self.seen)

    def _bin(self, c: float) -> int:
        if not math.isfinite(c):  # never from the engine (non-finite drafts are dropped): the lowest bin
            return 0
        return min(max(int(c * self.BINS), 0), self.BINS - 1)

    @property
    def rate(self) -> float:
        return max(1.0, self.tokens / self.cost)

    def _a(self, conf: torch.Tensor) -> torch.Tensor:
        """Estimated acceptance of drafts with these confidences."""
        if self._est is None or self._est.device != conf.device:
            self._est = to_device([a / n for a, n in zip(self.acc, self.seen)], conf.device)
        return self._est[(conf * self.BINS).long().clamp(0, self.BINS - 1)]

    def _dv(self, j: int) -> float:
        """Extra verify cost of the (j+1)-th draft."""
        return self.costs.verify_cost(j + 1) - self.costs.verify_cost(j)

    # -- interface ----------------------------------------------------------------------------------
    def begin(self, batch_size, costs=None):
        super().begin(batch_size, costs)
        if costs is None:
            raise ValueError("AdaptivePolicy needs costs")
        self.costs = costs
        self._decide()

    def budgets(self, remaining):
        self.warming = self.judged_total < self.warmup and self.warm_rounds < self.WARMUP_ROUNDS
        self.probing = self.warming or (not self.on and self.wait <= 0)
        if not self.on and not self.probing:
            self.wait -= 1
        n = self.probe_length if self.probing else self.length if self.on else 0
        self.A = None
        return [min(n, x) for x in remaining]

    def step(self, j, conf, live):
        ones = torch.ones_like(conf, dtype=torch.bool)
        if self.probing:
            return ones, ones
        if self.threshold is not None:
            return conf >= self.threshold, ones
        A = live.float() if j == 0 or self.A is None else self.A * live
        a = self._a(conf)
        R, B = self.rate, self.batch_size
        keep = A * a >= R / B * self._dv(j)
        A = torch.where(keep, A * a, torch.zeros_like(A))
        self.A = A
        gain = (A * a).sum()  # expected tokens the batch's next draft step adds (a as its own predictor)
        more = (gain >= R * (self.costs.small + self._dv(j + 1))) & keep
        return keep, more

    def learn(self, rec):
        for r, n in enumerate(rec.judged):
            for j in range(n):
                b = self._bin(rec.conf[r][j])
                self.seen[b] += 1.0
                self.acc[b] += float(j < rec.accepted[r])
        self.judged_total += sum(rec.judged)
        if sum(self.seen) > 4096:  # keep adapting: old evidence fades
            self.seen, self.acc = [x / 2 for x in self.seen], [x / 2 for x in self.acc]
        self._est = None
        firsts = [self._bin(c) for c in rec.first_conf if c is not None and not math.isnan(c)]
        if firsts:
            self.first = [0.98 * x for x in self.first]
            for b in firsts:
                self.first[b] += 1.0
        round_cost = rec.small_steps * self.costs.small + self.costs.verify_cost(rec.width) + self.costs.overhead
        self._count(float(sum(rec.committed)), round_cost)
        was_probe = self.probing
        self.warm_rounds += self.warming
        self._decide()
        if was_probe and not self.on:
            self.interval = min(64, self.interval * 2)
            self.wait = self.interval
        elif self.on:
            self.interval = self.probe_every

    def _merge(self, session):
        """Concurrent calls: the acceptance counts add up (this policy's plus what the session added to the
        counts it started from); the rest (rate, probe schedule, draft length) is the session's."""
        base = session._base
        merged = {}
        for name in ("seen", "acc", "first"):
            merged[name] = [
                max(0.0, x + s - b) for x, s, b in zip(getattr(self, name), getattr(session, name), base[name])
            ]
        merged["seen"] = [max(n, self.PRIOR / 2) for n in merged["seen"]]
        merged["acc"] = [min(a, n) for a, n in zip(merged["acc"], merged["seen"])]
        for name in ("judged_total", "warm_rounds"):
            merged[name] = getattr(self, name) + getattr(session, name) - base[name]
        super()._merge(session)
        self.__dict__.update(merged)
        self._est = None
        if getattr(self, "costs", None) is not None:
            self._decide()

    def _count(self, tokens: float, cost: float) -> None:
        """A round's tokens and cost into the moving sums behind the rate R."""
        self.tokens = 0.9 * self.tokens + tokens
        self.cost = 0.9 * self.cost + cost

    def _decide(self):
        """Draft length and on/off from the current estimates."""
        self.length, best = best_draft_length(self.alpha, self.costs, self.cap)
        first_value, total = 0.0, sum(self.first)
        if total > 0:
            R, dv = self.rate, self._dv(0)
            first_value = sum(
                f / total * max(0.0, a / n - R * dv) for f, a, n in zip(self.first, self.acc, self.seen)
            ) - R * (self.costs.small + self.costs.overhead)
        self.on = best > 1.0 or first_value > 0

    def describe(self):
        return {
            "policy": "adaptive",
            "drafting": self.on,
            "draft_length": self.length,
            "alpha": round(self.alpha, 4),
            "rate": round(self.rate, 3),
            "probe_every": self.interval,
            "fallback_threshold": "auto" if self.threshold is None else self.threshold,
            "acceptance_by_confidence": [round(a / n, 3) for a, n in zip(self.acc, self.seen)],
            "costs": self.costs.as_dict() if getattr(self, "costs", None) else None,
        }


class LookupPolicy(AdaptivePolicy):
    """The adaptive rule for a drafter whose whole candidate is known before any check (prompt lookup), with
    a "confidence" that names the draft position and kind of match (`PromptLookupProposer.confidence`), so
    each bin's acceptance is that of one position. A copy's later tokens are accepted more often than its
    first (measured on XSUM: 0.57, 0.77, 0.90 for a 2-gram match's first three), which an i.i.d. draft
    length misses: the budget is the cap, and `cut` chooses the length.

    R          the rate of the whole run: plain rounds (no draft from any drafter) count too (`no_draft`), at
               the tokens they committed for one large step. Over drafting rounds alone R came out ~1.8 on
               XSUM where the run made ~1.25, which priced the second token of a copy out
               (docs/performance.md, `benchmarks/lookup_replay.py`).
    cut        the length k of the whole candidate that maximises the round's expected tokens minus R times
               its cost: sum_{j<k} sum_r A_rj - R (verify[k] - 1 + overhead), with A_rj the product of the
               row's acceptances up to position j (0 keeps none). Not token by token: where the cost climbs in
               steps (a CPU, `bild.online_costs.verify_table`) one costly token can be worth paying for the
               cheap ones after it. In a batch the verify pass is as wide as its longest draft, so the cost is
               the batch's and every row with a candidate token in a kept column keeps it.
    re-probes  acceptance is learned only from drafts that are checked, so a position whose estimate fell
               below its price would never be checked again, even after the text turns copyable (one
               unlucky first call could switch the lookup off for good). After `cut_every` rounds in which a
               candidate was there and the rule kept none of it, a probe round drafts `probe_length` tokens
               without the rule; `cut_every` starts at `probe_every`, doubles (to 64) with each such probe
               that found a candidate, and falls back to `probe_every` when the rule keeps a draft again."""

    def reset(self):
        super().reset()
        self.cut_rounds, self.cut_every, self.reprobe = 0, self.probe_every, False

    def budgets(self, remaining):
        out = super().budgets(remaining)
        self.reprobe = self.on and not self.probing and self.cut_rounds >= self.cut_every
        if self.reprobe:
            self.probing = True  # the rule has cut every candidate for a while: check some anyway
            return [min(self.probe_length, x) for x in remaining]
        return [min(self.cap, x) if b and not self.probing else b for b, x in zip(out, remaining)]

    def step(self, j, conf, live):
        """Probe rounds and numeric thresholds only (`cut` asks it token by token; otherwise `cut` decides)."""
        keep, _ = super().step(j, conf, live)
        return keep, keep

    def no_draft(self, committed, width):
        # R is the whole run's rate, so plain rounds count in it: counted only over its own drafting rounds,
        # R overprices every draft. Rounds another drafter (the small model) drafted are left out: their cost
        # is that drafter's to count.
        if width == 0:
            self._count(float(sum(committed)), 1.0)
            self._decide()

    def cut(self, conf, live):
        if self.reprobe and live.any():  # a re-probe spent on a candidate: the next one waits twice as long
            self.reprobe, self.cut_rounds, self.cut_every = False, 0, min(64, 2 * self.cut_every)
        if self.probing or self.threshold is not None or not live.any():
            return super().cut(conf, live)
        A = torch.cumprod(self._a(conf) * live, dim=1)  # [B, K] prefix acceptance; 0 past a row's candidate
        K = live.shape[1]
        cost = torch.tensor([self.costs.verify_cost(k) - 1.0 + self.costs.overhead for k in range(1, K + 1)])
        value = A.sum(0).cumsum(0) - self.rate * cost.to(A.device)  # [K] value of keeping columns 0..k-1
        best = int(value.argmax())
        k = best + 1 if float(value[best]) > 0 else 0
        if k:
            self.cut_rounds, self.cut_every = 0, self.probe_every
        else:
            self.cut_rounds += 1
        return live & (torch.arange(K, device=live.device) < k)


class RowwisePolicy(DraftPolicy):
    """The adaptive rule with state per call and per row, on costs that involve no timing: what "auto"
    means in the lossy modes (rollback, Decoding-UNO / OPT), where a draft decision can change the text.

    Each row of a call gets a fresh `AdaptivePolicy` (batch size 1) that learns from that row's rounds only,
    and charges the row's own small steps and verify width. So a row's decisions, hence its text, depend on
    the row's prompt and the arguments alone: not on the other rows of the batch, earlier calls, machine
    load or measured time. `costs` come from the caller (`bild.generator.resolve_costs`: the given ones, or
    the timing-free prior of `bild.online_costs.prior_costs`). A fresh row probes for its first
    `warmup_drafts` judged drafts (4, not 12: the state lives one call); `probing` is a per-row list, and
    under greedy decoding the loop judges a probing row's drafts exactly, as for `AdaptivePolicy`.
    """

    needs_costs = True

    def __init__(
        self,
        fallback_threshold: float | None = None,
        max_small_steps: int | None = None,
        warmup_drafts: int = 4,
        prior: float | None = None,
        row_policy: type = AdaptivePolicy,
    ):
        self.threshold, self.cap, self.warmup, self.prior = fallback_threshold, max_small_steps, warmup_drafts, prior
        self.row_policy = row_policy  # AdaptivePolicy, or LookupPolicy for prompt lookup
        self.rows: list[AdaptivePolicy] = []
        self.costs = None
        self.probing = []

    def begin(self, batch_size, costs=None):
        super().begin(batch_size, costs)
        if costs is None:
            raise ValueError("RowwisePolicy needs costs")
        self.costs = costs
        self.rows = [
            self.row_policy(self.threshold, self.cap, warmup_drafts=self.warmup, prior=self.prior)
            for _ in range(batch_size)
        ]
        self.probing = [False] * batch_size
        for p in self.rows:
            p.begin(1, costs)

    def budgets(self, remaining):
        out = [p.budgets([n])[0] for p, n in zip(self.rows, remaining)]
        self.probing = [p.probing and b > 0 for p, b in zip(self.rows, out)]
        return out

    def step(self, j, conf, live):
        keeps, mores = zip(*(p.step(j, conf[r : r + 1], live[r : r + 1]) for r, p in enumerate(self.rows)))
        return torch.cat(keeps), torch.cat(mores)

    def cut(self, conf, live):
        return torch.cat([p.cut(conf[r : r + 1], live[r : r + 1]) for r, p in enumerate(self.rows)])

    def no_draft(self, committed, width):
        for c, p in zip(committed, self.rows):
            p.no_draft([c], width)

    def learn(self, rec):
        for r, p in enumerate(self.rows):
            if rec.first_conf[r] is None or (isinstance(rec.first_conf[r], float) and math.isnan(rec.first_conf[r])):
                # the row did not draft this round: a plain round for it, unless another drafter's tokens
                # were accepted in it (more than one committed; their cost is not a plain step's)
                p.no_draft([rec.committed[r]], 0 if rec.committed[r] <= 1 else rec.width)
                continue
            k = rec.drafted[r]
            p.learn(
                RoundRecord(
                    conf=[rec.conf[r]],
                    first_conf=[rec.first_conf[r]],
                    drafted=[k],
                    judged=[rec.judged[r]],
                    accepted=[rec.accepted[r]],
                    committed=[rec.committed[r]],
                    small_steps=max(1, k),
                    width=k,
                )
            )

    def reset(self):
        self.rows = []

    def describe(self):
        rows = [p.describe() for p in self.rows]
        return {
            "policy": "adaptive per row",
            "rows": [{k: d[k] for k in ("drafting", "draft_length", "alpha")} for d in rows],
            "fallback_threshold": "auto" if self.threshold is None else self.threshold,
            "costs": self.costs.as_dict() if self.costs is not None else None,
        }
