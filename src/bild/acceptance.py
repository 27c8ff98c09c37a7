"""Acceptance rules: the "accept" step. Each turns the scored drafts into a `Verdict`, with the functions of
`verification.py`, and reads the device once (the verdict).

    ExactGreedy      speculative decoding, greedy: drafts kept while they equal the large model's argmax
    ExactSampling    speculative sampling (Leviathan et al.); with eps > 0 Yin et al.'s Decoding-UNO / OPT
    Rollback         BiLD's rule (Kim et al.): reject at the first draft with -log p_large > threshold
    Block            block verification (Sun et al., ICLR 2025): lossless, keeps at least as many drafts
    BatchDrafts      Yin et al.'s Alg. 4: M drafts per prompt, the rule picks the one to follow

`make_rule(opts, do_sample)` picks the rule the options ask for.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .devices import to_device
from .verification import verify_batch_drafts, verify_block, verify_exact_greedy, verify_exact_sampling, verify_rollback


@dataclass
class Verdict:
    """Per row (host lists): drafts kept, the large model's next token after them, and with num_drafts the
    row whose draft each row now continues (`pick`, else None)."""

    n_accept: list[int]
    next_token: list[int]
    pick: list[int] | None = None


class AcceptanceRule:
    """judge(dt [B, K] padded drafts, n_draft [B] on the device, p_logits [B, K+1, V] processed large-model
    logits, proposal) -> Verdict. K >= 1 (a round without drafts never reaches a rule)."""

    def judge(self, dt, n_draft, p_logits, proposal) -> Verdict:
        n_acc, nxt = self.rule(dt, n_draft, p_logits, proposal)
        n_acc, nxt = torch.stack([n_acc, nxt]).tolist()  # the round's one read of the verdict
        return Verdict(n_acc, nxt)

    def rule(self, dt, n_draft, p_logits, proposal):
        raise NotImplementedError


class ExactGreedy(AcceptanceRule):
    def rule(self, dt, n_draft, p_logits, proposal):
        return verify_exact_greedy(dt, n_draft, p_logits)


class ExactSampling(AcceptanceRule):
    """Lossless at eps = 0; eps > 0 with resample "target" is Decoding-UNO, "residual" Decoding-OPT."""

    def __init__(self, epsilon: float = 0.0, resample: str = "residual"):
        self.epsilon, self.resample = epsilon, resample

    def rule(self, dt, n_draft, p_logits, proposal):
        q = proposal.draft_probs(dt, p_logits.shape[-1])
        return verify_exact_sampling(dt, n_draft, p_logits.softmax(-1), q, self.epsilon, self.resample)


class Block(AcceptanceRule):
    """The draft judged as one block (sampling; greedy decoding uses `ExactGreedy`)."""

    def rule(self, dt, n_draft, p_logits, proposal):
        q = proposal.draft_probs(dt, p_logits.shape[-1])
        return verify_block(dt, n_draft, p_logits.softmax(-1), q)


class Rollback(AcceptanceRule):
    """BiLD's rollback rule. Rows whose drafts come from a policy's probe round are judged by the exact rule
    under greedy decoding: a probe measures acceptance without letting in a token the large model would not
    write."""

    def __init__(self, threshold: float, do_sample: bool):
        self.threshold, self.do_sample = threshold, do_sample

    def rule(self, dt, n_draft, p_logits, proposal):
        exact_rows = [p and not self.do_sample for p in proposal.probing]
        if all(exact_rows):
            return verify_exact_greedy(dt, n_draft, p_logits)
        n_acc, nxt = verify_rollback(dt, n_draft, p_logits.softmax(-1), self.threshold, self.do_sample)
        if any(exact_rows):
            ex_acc, ex_nxt = verify_exact_greedy(dt, n_draft, p_logits)
            sel = to_device(exact_rows, dt.device, torch.bool)
            n_acc, nxt = torch.where(sel, ex_acc, n_acc), torch.where(sel, ex_nxt, nxt)
        return n_acc, nxt


class BatchDrafts(AcceptanceRule):
    """Rows g*M .. g*M+M-1 hold M drafts of prompt g; every row of a prompt continues the chosen one."""

    def __init__(self, M: int):
        self.M = M

    def judge(self, dt, n_draft, p_logits, proposal) -> Verdict:
        M, (B, K), V = self.M, dt.shape, p_logits.shape[-1]
        G = B // M
        p = p_logits.softmax(-1).reshape(G, M, K + 1, V)
        qm = proposal.q[:, :K].reshape(G, M, K, V) if K else p[:, :, :0]
        chosen, n_acc, nxt = verify_batch_drafts(dt.reshape(G, M, K), n_draft.reshape(G, M), p, qm)
        chosen, n_acc, nxt = torch.stack([chosen, n_acc, nxt]).tolist()  # the round's one read
        return Verdict(
            [n_acc[r // M] for r in range(B)],
            [nxt[r // M] for r in range(B)],
            [g * M + chosen[g] for g in range(G) for _ in range(M)],
        )


def make_rule(opts, do_sample: bool) -> AcceptanceRule:
    if opts.num_drafts > 1:
        return BatchDrafts(opts.num_drafts)
    if opts.verification == "rollback":
        return Rollback(opts.rollback_threshold, do_sample)
    if do_sample and opts.verification == "block":
        return Block()
    if do_sample:
        return ExactSampling(opts.uno_epsilon or opts.opt_epsilon, "target" if opts.uno_epsilon else "residual")
    return ExactGreedy()
