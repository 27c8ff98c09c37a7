"""Feature-draft training: the recorded features are the large model's, training on them raises first-draft
agreement (a shifted target would not), and the pair's file format round-trips a trained draft."""

import pytest
import torch
from models import make_inputs, make_pair

import bild
from bild.feature_draft import FeatureDraft
from bild.pairs.feature_training import (
    FeatureRecord,
    feature_agreement,
    feature_batch,
    feature_records,
    train_feature_draft,
)
from bild.pairs.smollm2 import load_feature_draft, make_small_from_large, save_feature_draft_weights


def greedy_sequences(large, n=24, new=16):
    ids, mask = make_inputs("llama", n, seed=3)
    out = large.generate(ids, attention_mask=mask, max_new_tokens=new, do_sample=False)
    seqs, plens = [], []
    for r in range(n):
        prompt = ids[r][mask[r].bool()].tolist()
        seqs.append(prompt + out[r, ids.shape[1] :].tolist())
        plens.append(len(prompt))
    return seqs, plens


def test_feature_records_are_the_large_models_features(one_thread):
    _, large = make_pair("llama", 0)
    seqs, plens = greedy_sequences(large, n=5)
    recs = feature_records(large, seqs, plens, batch_size=2, progress=False)
    with torch.no_grad():
        for s, r in zip(seqs, recs):
            h = large.base_model(torch.tensor([s])).last_hidden_state[0]
            assert torch.allclose(r.feats.float(), h, atol=2e-2, rtol=1e-2)
            assert torch.equal(r.argmax, large(torch.tensor([s])).logits[0].argmax(-1))
            assert r.tokens.tolist() == s
    tok, h, prev, tgt, mask, output = feature_batch(recs[:3])
    assert torch.equal(prev[0, 1 : len(seqs[0])], h[0, : len(seqs[0]) - 1]) and torch.all(prev[:, 0] == 0)
    n = len(seqs[1])
    assert output[1].nonzero().flatten().tolist() == list(range(plens[1] - 1, n - 1))  # predicts output tokens


def test_training_raises_first_draft_agreement(one_thread):
    _, large = make_pair("llama", 1, depth_scale=1.0)
    seqs, plens = greedy_sequences(large)
    recs = feature_records(large, seqs, plens, progress=False)
    draft = FeatureDraft.from_large(large, layer=0)
    before = feature_agreement(draft, recs)
    summary = train_feature_draft(draft, large, recs, recs[:8], max_steps=120, lr=3e-3, log=lambda s: None)
    after = feature_agreement(draft, recs)
    assert summary["steps"] == 120
    assert after[0] > max(0.6, before[0] + 0.25), (before, after)

    # control: trained on targets shifted by one position, the draft does not learn the large model's next token
    shifted = [FeatureRecord(r.tokens, r.feats, torch.roll(r.argmax, 1), r.prompt_len) for r in recs]
    control = FeatureDraft.from_large(large, layer=0)
    train_feature_draft(control, large, shifted, (), max_steps=120, lr=3e-3, log=lambda s: None)
    assert feature_agreement(control, recs)[0] < after[0] - 0.25


@pytest.mark.parametrize("pruned", [True, False])
def test_pair_file_round_trip(pruned, tmp_path, one_thread):
    _, large = make_pair("llama", 2)
    small = make_small_from_large(large, [0, 1])
    if pruned:
        bild.prune_draft_vocabulary(small, list(range(0, large.config.vocab_size, 2)))
    draft = FeatureDraft.from_draft(small)
    with torch.no_grad():
        for name, p in draft.named_parameters():
            if "embed_tokens" not in name:  # the input embeddings are the large model's, not stored
                p.add_(0.01 * torch.randn_like(p))
    path = save_feature_draft_weights(draft, large, tmp_path / "f.safetensors", rank=64, dtype=torch.float32)
    back = load_feature_draft(large, path)
    assert isinstance(back, FeatureDraft) and bild.draft_vocabulary(back) == bild.draft_vocabulary(draft)
    ids = make_inputs("llama", 1)[0]
    feats = torch.randn(1, ids.shape[1], large.config.hidden_size)
    with torch.no_grad():
        a = draft.eval()(input_ids=ids, features=feats, use_cache=False).logits
        b = back(input_ids=ids, features=feats, use_cache=False).logits
    assert torch.allclose(a, b, atol=1e-4)


def test_unrolled_training_raises_second_draft_agreement(one_thread):
    """unroll=2 also trains the second draft of a round (own features in place of h_{t-1}): its second-draft
    agreement beats training on the large model's features alone, at the same steps."""
    _, large = make_pair("llama", 1, depth_scale=1.0)
    seqs, plens = greedy_sequences(large)
    recs = feature_records(large, seqs, plens, progress=False)
    second = {}
    for unroll in (1, 2):
        draft = FeatureDraft.from_large(large, layer=0)
        with torch.no_grad():  # make h matter from the start
            draft.fc.weight[:, large.config.hidden_size :] = 0.5 * torch.eye(large.config.hidden_size)
        train_feature_draft(draft, large, recs, (), max_steps=120, lr=3e-3, unroll=unroll, log=lambda s: None)
        second[unroll] = feature_agreement(draft, recs)[1]
    assert second[2] > second[1] + 0.05, second
