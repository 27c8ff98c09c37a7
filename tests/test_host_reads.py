"""The loop reads from the device only what it branches on: one read per draft step and a few per round.

A shim counts tensor-to-host calls (`.tolist()`, `.item()`, `bool()`, `int()`, `float()`, `.numpy()`) made by
the engine while `DraftVerifyLoop.run` runs, outside the models' own forward passes (which are
transformers' code). On a GPU each such call waits for the device.
"""

import contextlib

import pytest
import torch
from models import make_inputs, make_pair

import bild
from bild.decoding import DraftVerifyLoop

READS = ("tolist", "item", "__bool__", "__int__", "__float__", "__index__", "numpy")


@contextlib.contextmanager
def count_reads(models):
    state = {"on": False, "in_model": 0, "reads": 0}
    originals = {name: getattr(torch.Tensor, name) for name in READS}

    def shim(name):
        def read(self, *args, **kwargs):
            if state["on"] and not state["in_model"]:
                state["reads"] += 1
            return originals[name](self, *args, **kwargs)

        return read

    run = DraftVerifyLoop.run

    def counted_run(self, *args, **kwargs):
        state["on"] = True
        try:
            return run(self, *args, **kwargs)
        finally:
            state["on"] = False

    hooks = []
    for m in models:
        hooks.append(m.register_forward_pre_hook(lambda *a: state.__setitem__("in_model", state["in_model"] + 1)))
        hooks.append(m.register_forward_hook(lambda *a: state.__setitem__("in_model", state["in_model"] - 1)))
    for name in READS:
        setattr(torch.Tensor, name, shim(name))
    DraftVerifyLoop.run = counted_run
    try:
        yield state
    finally:
        for name, f in originals.items():
            setattr(torch.Tensor, name, f)
        DraftVerifyLoop.run = run
        for h in hooks:
            h.remove()


@pytest.mark.parametrize("family", ["llama", "t5"])
@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("mode", ["greedy-rollback", "sample-exact", "auto-exact", "drafts3", "topk-processors"])
def test_reads_per_round(family, batch, mode):
    small, large = make_pair(family)
    ids, mask = make_inputs(family, batch, seed=4)
    kw = dict(fallback_threshold=0.3, max_small_steps=4)
    gen_kw = dict(max_new_tokens=24)
    if mode == "greedy-rollback":
        kw.update(verification="rollback", rollback_threshold=2.0)
    elif mode == "sample-exact":
        kw.update(verification="exact")
        gen_kw.update(do_sample=True, top_k=0)
    elif mode == "topk-processors":  # logits processors on rows of different lengths (top-k, repetition penalty)
        kw.update(verification="exact")
        gen_kw.update(do_sample=True, top_k=20, repetition_penalty=1.2)
    elif mode == "auto-exact":
        kw = dict(verification="exact", costs=0.3)  # adaptive policy; given costs (no timing)
    else:
        kw.update(verification="exact", num_drafts=3)
        gen_kw.update(do_sample=True, top_k=0)
    gen = bild.BiLDGenerator(small, large, **kw)
    gen.generate(ids, attention_mask=mask, **gen_kw)  # warm: layout probes run once per model
    torch.manual_seed(0)
    with count_reads([small, large]) as state:
        gen.generate(ids, attention_mask=mask, **gen_kw)
    s = gen.stats
    draft_steps = s.small_forwards  # a drafting round makes as many draft-step reads as small forwards
    assert s.rounds > 3
    # per call: the prompt mask, the first token; per round: the verdict; per draft step: one
    assert state["reads"] <= draft_steps + s.rounds + 3, (state["reads"], draft_steps, s.rounds)
