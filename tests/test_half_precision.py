"""Exact mode in half precision (README, "Half precision"): a verify pass over k+1 tokens rounds differently
from `large.generate`'s 1-token step, so in bfloat16 / float16 the output equals `large.generate`'s up to the
first position where the large model's two best logits are within that rounding (`ULPS` units in the last
place of the top logit), and from there on each token is the large model's greedy choice for the prefix bild
has (its logits, up to the same rounding, are those of a forward of the large model over bild's own output).

Checked per family on several prompts: the logits bild returns (`output_logits`) against `large.generate`'s
up to the first difference, the top-2 gap there, and after it against a teacher-forced forward of the large
model. Mixed dtypes (a bfloat16 large model with a float32 draft and the reverse) too, and the dtype refusals.
"""

import pytest
import torch
from models import make_inputs, make_pair

import bild
from bild import precision

N = 24
# the rounding allowed between two shapes of one forward, in units in the last place of the top logit; the most
# measured here: bfloat16 5.2 (the SmolLM2 pair: 4.9), float16 22 (T5; float16 has 3 more mantissa bits)
ULPS = {torch.bfloat16: 8, torch.float16: 32, torch.float32: 64}
MEASURED = {}  # dtype -> the most ulps seen (printed with -s)


def ulp(x: float, dtype) -> float:
    """`ULPS[dtype]` units in the last place of `dtype` at magnitude |x|."""
    one = torch.finfo(dtype).eps * 2.0 ** torch.floor(torch.log2(torch.tensor(max(abs(x), 1e-30)))).item()
    return ULPS[dtype] * one


def teacher_forced(large, ids, mask, seq, encoder_decoder):
    """The large model's logits at every position of `seq` (one forward), float32 [T, V]."""
    with torch.no_grad():
        if encoder_decoder:
            out = large(input_ids=ids, attention_mask=mask, decoder_input_ids=seq)
        else:
            out = large(input_ids=seq, attention_mask=torch.ones_like(seq))
    return out.logits[0].float()


def check_half(small, large, ids, mask, dtype, encoder_decoder, **gen_kw):
    """Asserts the statement above for one prompt (batch 1, unpadded). Returns (first difference t or None, gap)."""
    kw = dict(max_new_tokens=N, do_sample=False, return_dict_in_generate=True, output_logits=True, **gen_kw)
    ref = large.generate(ids, attention_mask=mask, **kw)
    gen = bild.BiLDGenerator(small, large, verification="exact", fallback_threshold=0.0, max_small_steps=4)
    got = gen.generate(ids, attention_mask=mask, **kw)
    P = 1 if encoder_decoder else ids.shape[1]
    z, y = ref.sequences[0, P:].tolist(), got.sequences[0, P:].tolist()
    t = next((j for j in range(min(len(z), len(y))) if z[j] != y[j]), None)
    if t is None:
        assert len(z) == len(y)
    for j in range(len(z) if t is None else t + 1):  # the same prefix: the same logits up to rounding
        a, b = ref.logits[j][0].float(), got.logits[j][0].float()
        d = ((a - b).abs().max() / ulp(a.max().item(), dtype)).item()
        MEASURED[dtype] = max(MEASURED.get(dtype, 0.0), d * ULPS[dtype])
        assert d <= 1, (j, d * ULPS[dtype])
    gap = None
    if t is not None:
        # a near-tie: large.generate's two candidates within the rounding
        MEASURED["first differences"] = MEASURED.get("first differences", 0) + 1
        a = ref.logits[t][0].float()
        gap = (a[z[t]] - a[y[t]]).item()
        assert 0 <= gap <= ulp(a.max().item(), dtype)
        # from there on: the large model's own greedy choice for bild's prefix
        forced = teacher_forced(large, ids, mask, got.sequences, encoder_decoder)[P - 1 :]
        for j in range(t, len(y)):
            b = got.logits[j][0].float()
            assert y[j] == b.argmax().item()
            assert (forced[j] - b).abs().max() <= ulp(b.max().item(), dtype), j
    if large.dtype == torch.float32:  # a float32 large model: large.generate's output, whatever the draft's dtype
        assert t is None
    return t, gap


def teardown_module():
    print("most ulps between bild's and large.generate's logits:", {str(k): round(v, 1) for k, v in MEASURED.items()})


@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neox", "t5", "bart"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_is_large_generate_up_to_near_ties(family, dtype):
    small, large = make_pair(family)
    small, large = small.to(dtype), large.to(dtype)
    for seed in range(4):
        ids, mask = make_inputs(family, 1, seed=seed)
        check_half(small, large, ids, mask, dtype, family in ("t5", "bart"))


def test_near_ties_are_where_outputs_part():
    """A large model whose head rows come in near-duplicate pairs (row 2i+1 = row 2i x 1.002: their logits 0.2%
    apart, within bfloat16's rounding): outputs part from large.generate's, each time at such a near-tie, and
    go on as the large model's greedy choice for bild's prefix (the checks of `check_half` after t)."""
    small, large = make_pair("llama")
    with torch.no_grad():
        W = large.get_output_embeddings().weight
        half = W.shape[0] // 2
        W[1::2][:half] = W[0::2][:half] * 1.002
    small, large = small.to(torch.bfloat16), large.to(torch.bfloat16)
    parted = []
    for seed in range(6):
        ids, mask = make_inputs("llama", 1, seed=seed)
        t, gap = check_half(small, large, ids, mask, torch.bfloat16, False)
        parted.append(t is not None)
    assert sum(parted) >= 2, parted  # 5 of 6 on torch 2.13's CPU build


@pytest.mark.parametrize("family", ["llama", "t5"])
@pytest.mark.parametrize(
    "small_dtype, large_dtype",
    [(torch.float32, torch.bfloat16), (torch.bfloat16, torch.float32), (torch.float16, torch.bfloat16)],
)
def test_mixed_dtypes(family, small_dtype, large_dtype):
    """The draft's logits are cast to float32 where they are compared: any two dtypes combine. With a float32
    large model the output is large.generate's exactly."""
    small, large = make_pair(family)
    small, large = small.to(small_dtype), large.to(large_dtype)
    for seed in range(3):
        ids, mask = make_inputs(family, 1, seed=seed)
        check_half(small, large, ids, mask, large_dtype, family == "t5")
    ids, mask = make_inputs(family, 3, seed=5)  # a padded batch, sampled: runs, rows of the right length
    out = bild.BiLDGenerator(small, large).generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=True)
    assert out.shape[0] == 3


def test_a_dtype_outside_the_list_is_refused_naming_both():
    small, large = make_pair("llama")
    large = large.to(torch.bfloat16)
    bad = small.to(torch.float8_e4m3fn)
    with pytest.raises(ValueError, match=r"small_model.*float8_e4m3fn.*large_model torch\.bfloat16"):
        bild.BiLDGenerator(bad, large)
    with pytest.raises(ValueError, match=r"float8_e4m3fn"):
        bild.BiLDGenerator(None, bad)


def test_a_dtype_the_device_cannot_run_is_refused_before_any_forward(monkeypatch):
    """As an old CPU build refuses a float16 matmul: the check runs no forward of either model."""
    small, large = make_pair("llama")
    small, large = small.to(torch.float16), large.to(torch.float32)
    monkeypatch.setitem(
        precision._RUNS, ("cpu", torch.float16), "RuntimeError: \"addmm_impl_cpu_\" not implemented for 'Half'"
    )
    calls = []
    for m in (small, large):
        m.register_forward_pre_hook(lambda *a: calls.append(1))
    ids, mask = make_inputs("llama", 1)
    with pytest.raises(
        ValueError,
        match=r"torch\.float16 does not run on cpu.*small_model torch\.float16.*"
        r"large_model torch\.float32",
    ):
        bild.BiLDGenerator(small, large)
    with pytest.raises(ValueError, match=r"torch\.float16 does not run on cpu"):
        large.generate(ids, attention_mask=mask, custom_generate=bild.generate, small_model=small, max_new_tokens=4)
    assert not calls
    assert precision.runs_on("cpu", torch.bfloat16) is None  # this build runs both half types
