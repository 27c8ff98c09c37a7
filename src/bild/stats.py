"""Per-call counters of the draft-then-verify loop, and the papers' speedup formula."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class GenerationStats:
    """What one `generate` call did. Token counts are summed over the rows of a batch; forward counts
    count batched calls once. Only committed tokens count: nothing after a row's eos or stopping criterion.

    new_tokens       tokens written to the output (all rows)
    small_forwards   small-model forward calls (prefill included)
    large_forwards   large-model forward calls (prefill included)
    rounds           draft-verify rounds (after the prefill); one per large forward after it
    draftless_rounds rounds in which no row drafted (the large model wrote one token per row)
    draft_budgets    per round, the largest draft budget the policy granted a row (0 = no draft)
    fallbacks        draft steps where the policy dropped a drafted token and stopped the row's draft
                     (BiLD: top probability below `fallback_threshold`)
    drafted          a row's own drafts sent to the large model (batch-fill drafts excluded)
    judged           own drafts the large model judged: in each row and round, up to and including the
                     first rejected one (the drafts after it are discarded unjudged)
    accepted         own drafts kept (and committed)
    rollbacks        row-rounds that ended in a rejected draft (the large model's token replaced it): the
                     number of rejections of Leviathan et al. / Yin et al.
    fill_drafted / fill_accepted   batch-fill drafts (exact verification, batch > 1: a row that stopped
                     drafts on while another row drafts) sent / kept
    verify_lengths   tokens each live row fed to each verify pass (its last committed token + its drafts),
                     one entry per row and pass
    verify_widths    padded width of each verify pass (what the batched forward computes per row)
    small_tokens_fed / large_tokens_fed   token positions each model read (prompt included, padding excluded)
    drafted_by / accepted_by   the same `drafted` / `accepted` counts split by drafter: {"small": n, "lookup": n}
                     (a drafter that drafted nothing this call is absent)
    nonfinite_drafts draft steps (per row) at which the small model's logits held NaN or inf: the row's draft
                     ended there, its token dropped (the large model wrote the next token)
    token_sources    per row, for each new token, who wrote it: "small" (a small-model draft the large model
                     kept), "lookup" (a prompt-lookup draft it kept) or "large" (the large model's own token)
    policy           what the draft policy had in force at the end of the call (see `bild.policies`)
    """

    new_tokens: int = 0
    small_forwards: int = 0
    large_forwards: int = 0
    rounds: int = 0
    draftless_rounds: int = 0
    draft_budgets: list[int] = field(default_factory=list)
    fallbacks: int = 0
    drafted: int = 0
    judged: int = 0
    accepted: int = 0
    rollbacks: int = 0
    fill_drafted: int = 0
    fill_accepted: int = 0
    verify_lengths: list[int] = field(default_factory=list)
    verify_widths: list[int] = field(default_factory=list)
    small_tokens_fed: int = 0
    large_tokens_fed: int = 0
    drafted_by: dict[str, int] = field(default_factory=dict)
    accepted_by: dict[str, int] = field(default_factory=dict)
    nonfinite_drafts: int = 0
    token_sources: list[list[str]] = field(default_factory=list)
    policy: dict = field(default_factory=dict)

    @property
    def acceptance_rate(self) -> float:
        """The papers' alpha: accepted / judged own drafts."""
        return self.accepted / self.judged if self.judged else 0.0

    @property
    def tokens_per_large_call(self) -> float:
        """New tokens per large-model forward (prefill included); 1.0 for plain decoding."""
        return self.new_tokens / self.large_forwards if self.large_forwards else 0.0

    @property
    def fallback_rate(self) -> float:
        """Fallbacks per new token."""
        return self.fallbacks / self.new_tokens if self.new_tokens else 0.0

    @property
    def rollback_rate(self) -> float:
        """Rollbacks per new token."""
        return self.rollbacks / self.new_tokens if self.new_tokens else 0.0

    def as_dict(self) -> dict:
        d = asdict(self)
        d.update(
            acceptance_rate=self.acceptance_rate,
            tokens_per_large_call=self.tokens_per_large_call,
            fallback_rate=self.fallback_rate,
            rollback_rate=self.rollback_rate,
        )
        return d


def expected_speedup(alpha: float, gamma: int, c: float) -> float:
    """Expected walltime improvement of speculative decoding (Leviathan et al. 2023, Thm 3.8).

    (1 - alpha^(gamma+1)) / ((1 - alpha) (gamma c + 1)) with alpha the per-token acceptance rate,
    gamma the draft length and c the cost of a small-model step over a large-model step. It assumes
    a verify pass over gamma+1 tokens costs one large step, which holds on a GPU, not on a CPU.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if gamma < 0 or c < 0:
        raise ValueError(f"gamma and c must be >= 0, got gamma={gamma}, c={c}")
    tokens = gamma + 1 if alpha == 1.0 else (1 - alpha ** (gamma + 1)) / (1 - alpha)
    return tokens / (gamma * c + 1)
