"""Models whose forward is wrapped are decoded exactly like the plain model: capabilities are found by what
a model does (`bild.adapters.capabilities`), not by how its forward is spelled. Each wrapped pair must give
`large.generate`'s output in exact mode (a padded batch), take the same batch layout as the plain model,
and actually draft."""

import copy

import pytest
import torch
from models import make_inputs, make_pair

import bild
from bild.adapters import batch_layout, capabilities

KW = dict(max_new_tokens=10, do_sample=False)


def _plain_wrapper(model):
    inner = model.forward

    def forward(*args, **kwargs):  # a signature that names nothing
        return inner(*args, **kwargs)

    model.forward = forward
    return model


def _accelerate_offload(model):
    from accelerate import cpu_offload

    cpu_offload(model, execution_device="cpu")
    return model


def _accelerate_dispatch(model):
    from accelerate import dispatch_model

    names = [n for n, _ in model.named_children()]
    return dispatch_model(model, device_map={n: "cpu" for n in names})


def _compiled(model):
    model.forward = torch.compile(model.forward, backend="eager", dynamic=True)
    return model


WRAPPERS = {
    "plain": _plain_wrapper,
    "accelerate_cpu_offload": _accelerate_offload,
    "accelerate_dispatch": _accelerate_dispatch,
    "torch_compile": _compiled,
}


def _check(small, large, ref_large, family):
    ids, mask = make_inputs(family, 3, seed=5)
    want = ref_large.generate(ids, attention_mask=mask, **KW)
    gen = bild.BiLDGenerator(small, large, verification="exact", fallback_threshold=0.0, max_small_steps=3)
    got = gen.generate(ids, attention_mask=mask, **KW)
    assert torch.equal(got, want)
    assert gen.stats.drafted > 0
    return gen


@pytest.mark.parametrize("family", ["llama", "gpt2", "t5"])
@pytest.mark.parametrize("wrap", sorted(WRAPPERS))
def test_wrapped_forward_is_exact_and_keeps_its_layout(family, wrap):
    small, large = make_pair(family)
    plain_layout = batch_layout(copy.deepcopy(large))
    plain_caps = capabilities(copy.deepcopy(large))
    ref = copy.deepcopy(large)
    small, large = WRAPPERS[wrap](small), WRAPPERS[wrap](large)
    _check(small, large, ref, family)
    assert capabilities(large) == plain_caps
    assert batch_layout(large) == plain_layout


def _lora(model, family, seed=0):
    from peft import LoraConfig, get_peft_model

    targets = {"llama": ["q_proj", "v_proj"], "gpt2": ["c_attn"], "t5": ["q", "v"]}[family]
    peft_model = get_peft_model(
        model, LoraConfig(r=4, lora_alpha=8, target_modules=targets, fan_in_fan_out=family == "gpt2")
    )
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # a trained adapter: B != 0, so the LoRA path changes the draft
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return peft_model.eval()


@pytest.mark.parametrize("family", ["llama", "gpt2", "t5"])
def test_peft_lora_draft(family):
    small, large = make_pair(family)
    lora_small = _lora(small, family)
    merged = copy.deepcopy(lora_small).merge_and_unload()
    gen = _check(lora_small, large, large, family)  # exact: the large model's output
    ids, mask = make_inputs(family, 3, seed=5)
    # rollback mode keeps drafts, so the text depends on the draft: the LoRA model drafts as its merged weights do
    opts = dict(fallback_threshold=0.0, max_small_steps=3, rollback_threshold=3.0, verification="rollback")
    via_peft = bild.BiLDGenerator(lora_small, large, **opts).generate(ids, attention_mask=mask, **KW)
    via_merged = bild.BiLDGenerator(merged, large, **opts).generate(ids, attention_mask=mask, **KW)
    assert torch.equal(via_peft, via_merged)
    assert gen.stats.drafted > 0


def test_a_model_without_kv_cache_is_still_refused_when_wrapped():
    from transformers import OpenAIGPTConfig, OpenAIGPTLMHeadModel

    torch.manual_seed(0)
    cfg = OpenAIGPTConfig(vocab_size=96, n_embd=32, n_layer=2, n_head=4, n_positions=64)
    m1, m2 = _plain_wrapper(OpenAIGPTLMHeadModel(cfg).eval()), _plain_wrapper(OpenAIGPTLMHeadModel(cfg).eval())
    with pytest.raises(ValueError, match="has no KV cache"):
        bild.BiLDGenerator(m1, m2)
