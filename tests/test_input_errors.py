"""Bad prompts get a ValueError / TypeError naming `input_ids` / `attention_mask` and what is expected, before
any work, through both entry points; transformers' own `generate` fails on each deep inside a forward (or
takes float ids), which the first test checks so that this file notices if that changes."""

import pytest
import torch
from models import make_pair

import bild
from bild.analysis.cost_model import ForwardCounter

IDS = torch.tensor([[1, 5, 9, 13]])
CASES = {  # name -> (generate kwargs, error type, message pattern)
    "no tokens": (dict(inputs=torch.zeros(1, 0, dtype=torch.long)), ValueError, r"`input_ids` has 0 tokens per row"),
    "no rows": (dict(inputs=torch.zeros(0, 5, dtype=torch.long)), ValueError, r"`input_ids` has 0 rows"),
    "mask a column short": (
        dict(inputs=IDS, attention_mask=torch.ones(1, 3, dtype=torch.long)),
        ValueError,
        r"`attention_mask`.* shape of `input_ids`, \[1, 4\].*got \[1, 3\]",
    ),
    "mask a row more": (
        dict(inputs=IDS, attention_mask=torch.ones(2, 4, dtype=torch.long)),
        ValueError,
        r"`attention_mask`.* shape of `input_ids`, \[1, 4\].*got \[2, 4\]",
    ),
    "float ids": (dict(inputs=IDS.float()), TypeError, r"`input_ids` must hold integer token ids"),
    "ids out of the vocabulary": (
        dict(inputs=torch.tensor([[1, 500, 9]])),
        ValueError,
        r"`input_ids` holds token ids outside the model's vocabulary \[0, 96\)",
    ),
}
DECODER_ONLY_CG = (
    "no tokens",
    "no rows",
    "mask a column short",
    "mask a row more",
    "float ids",
    "ids out of the vocabulary",
)


@pytest.mark.parametrize("family", ["llama", "t5"])
def test_transformers_refuses_or_misreads_these(family):
    small, large = make_pair(family)
    for name, (kw, _, _) in CASES.items():
        if family == "t5" and "mask" in name:
            continue  # T5's generate takes a mask of another shape silently (bild refuses it)
        with pytest.raises((RuntimeError, IndexError)):
            large.generate(**kw, max_new_tokens=3)


@pytest.mark.parametrize("family", ["llama", "t5"])
@pytest.mark.parametrize("name", list(CASES))
def test_bad_prompts_are_refused_by_name_before_any_work(family, name):
    small, large = make_pair(family)
    kw, err, pattern = CASES[name]
    gen = bild.BiLDGenerator(small, large)
    with ForwardCounter(small=small, large=large) as fc, pytest.raises(err, match=pattern):
        gen.generate(**kw, max_new_tokens=3)
    assert fc.count("small") == fc.count("large") == 0
    if family == "llama" and name in DECODER_ONLY_CG:  # an encoder-decoder's encoder runs before bild is called
        with ForwardCounter(small=small, large=large) as fc, pytest.raises(err, match=pattern):
            large.generate(**kw, max_new_tokens=3, custom_generate=bild.generate, small_model=small)
        assert fc.count("small") == fc.count("large") == 0


def test_one_dimensional_ids_and_a_mask_that_is_not_a_tensor():
    small, large = make_pair("llama")
    gen = bild.BiLDGenerator(small, large)
    with pytest.raises(ValueError, match=r"`input_ids` must be a 2-D tensor.*\[4\].*ids\[None\]"):
        gen.generate(IDS[0], max_new_tokens=3)
    with pytest.raises(TypeError, match=r"`attention_mask` must be a torch.Tensor"):
        gen.generate(IDS, attention_mask=[[1, 1, 1, 1]], max_new_tokens=3)
    with pytest.raises(TypeError, match=r"`input_ids` must be a torch.Tensor"):
        gen.generate(input_ids=[[1, 5, 9]], max_new_tokens=3)
    # a float mask of the right shape is what transformers takes too
    assert torch.equal(
        gen.generate(IDS, attention_mask=torch.ones(1, 4), max_new_tokens=5),
        large.generate(IDS, attention_mask=torch.ones(1, 4), max_new_tokens=5),
    )
