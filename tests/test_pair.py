"""The draft-from-large construction and the offline pair cache (tiny models; real GGUF optional)."""

import json

import pytest
import torch

pytest.importorskip("transformers")
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from bild import pair  # noqa: E402
from bild.pairs import cli as pair_cli  # noqa: E402


def tiny_large(tie=True):
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=80,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=6,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=tie,
        pad_token_id=0,
        eos_token_id=2,
        bos_token_id=1,
    )
    return LlamaForCausalLM(cfg).eval()


@pytest.mark.parametrize("tie", [True, False])
def test_small_from_large_copies_chosen_layers(tie):
    large = tiny_large(tie)
    small = pair.make_small_from_large(large, [0, 3, -1])
    assert small.config.num_hidden_layers == 3
    assert small.config.bild_source_layers == [0, 3, 5]
    assert small.config.vocab_size == large.config.vocab_size
    assert small.get_output_embeddings().weight.shape == large.get_output_embeddings().weight.shape
    for i, src in enumerate([0, 3, 5]):
        a, b = small.model.layers[i].state_dict(), large.model.layers[src].state_dict()
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a)
        assert small.model.layers[i].self_attn.layer_idx == i  # own cache slots
    assert torch.equal(small.model.embed_tokens.weight, large.model.embed_tokens.weight)
    assert torch.equal(small.lm_head.weight, large.lm_head.weight)
    assert torch.equal(small.model.norm.weight, large.model.norm.weight)
    # the copies are independent: training the draft leaves the large model alone
    small.model.layers[0].mlp.up_proj.weight.data.add_(1.0)
    assert not torch.equal(small.model.layers[0].mlp.up_proj.weight, large.model.layers[0].mlp.up_proj.weight)
    # same vocabulary, usable with KV cache
    ids = torch.tensor([[1, 5, 9, 11]])
    out = small.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False)
    assert out.shape[1] == 8


def test_all_layers_reproduces_large():
    large = tiny_large()
    full = pair.make_small_from_large(large, range(6))
    ids = torch.tensor([[1, 4, 7, 9, 13]])
    with torch.no_grad():
        assert torch.allclose(full(ids).logits, large(ids).logits, atol=1e-5)


def test_draft_weights_roundtrip_and_size(tmp_path):
    large = tiny_large()
    small = pair.make_small_from_large(large, [0, 5])
    with torch.no_grad():
        for p in small.model.layers.parameters():
            p.add_(0.01 * torch.randn_like(p))
    own = pair.small_own_state_dict(small)
    assert not any("embed_tokens" in k or k.startswith("lm_head") for k in own)
    assert any(k.startswith("model.norm") for k in own)
    path = pair.save_draft_weights(small, tmp_path / "d.safetensors")
    back = pair.load_draft_from_weights(large, path)
    assert back.config.bild_source_layers == [0, 5]
    ids = torch.tensor([[1, 4, 7, 9]])
    with torch.no_grad():
        # float16 storage: equal up to half precision
        assert torch.allclose(back(ids).logits, small(ids).logits, atol=2e-2)
    assert torch.equal(back.model.embed_tokens.weight, large.model.embed_tokens.weight)


def test_build_pair_from_cached_large_and_reuse(tmp_path, monkeypatch):
    """build_pair only needs cache/large + draft weights; a second call reuses the folder."""
    large = tiny_large()
    cache = tmp_path / "cache"
    (cache / "large").mkdir(parents=True)
    large.save_pretrained(cache / "large")
    tok_dir = cache / "large"
    try:  # a tokenizer is needed by load_large; a tiny word-level one is enough
        from tokenizers import Tokenizer, models
        from transformers import PreTrainedTokenizerFast

        vocab = {f"w{i}": i for i in range(80)}
        t = PreTrainedTokenizerFast(
            tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="w0")), pad_token="w0", eos_token="w2"
        )
        t.save_pretrained(tok_dir)
    except Exception as e:  # pragma: no cover
        pytest.skip(f"cannot make a tiny tokenizer: {e}")
    small = pair.make_small_from_large(large, [1, 4])
    w = pair.save_draft_weights(small, tmp_path / "w.safetensors")
    monkeypatch.setenv("BILD_CACHE", str(cache))
    assert pair.default_cache_dir() == cache
    pair.build_pair(weights=w)
    assert (cache / "small" / "config.json").exists()
    mtime = (cache / "small" / "config.json").stat().st_mtime_ns
    pair.build_pair(weights=w)  # reused, not rebuilt
    assert (cache / "small" / "config.json").stat().st_mtime_ns == mtime
    p = pair.load_pair(build=False)
    assert p.small.config.num_hidden_layers == 2
    assert p.small.config.bild_source_layers == [1, 4]
    ids = torch.tensor([[1, 4, 7]])
    with torch.no_grad():
        assert torch.allclose(p.small(ids).logits, small(ids).logits, atol=2e-2)


def _tiny_cache(tmp_path):
    """cache/large holding a tiny Llama + word-level tokenizer, as build_large would leave it."""
    large = tiny_large()
    cache = tmp_path / "cache"
    large.save_pretrained(cache / "large")
    try:
        from tokenizers import Tokenizer, models
        from transformers import PreTrainedTokenizerFast

        vocab = {f"w{i}": i for i in range(80)}
        t = PreTrainedTokenizerFast(
            tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="w0")), pad_token="w0", eos_token="w2"
        )
        t.save_pretrained(cache / "large")
    except Exception as e:  # pragma: no cover
        pytest.skip(f"cannot make a tiny tokenizer: {e}")
    return large, cache


def _perturbed_draft(large, layers, seed):
    small = pair.make_small_from_large(large, layers)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in small.model.layers.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return small


def test_cache_is_keyed_to_the_draft_weights(tmp_path, monkeypatch):
    """A cache built from one draft is rebuilt when the draft file changes, even at the same path,
    size and mtime (what a release replacing the packaged asset, or a retrained file, looks like)."""
    import os

    large, cache = _tiny_cache(tmp_path)
    w = tmp_path / "draft.safetensors"
    old = _perturbed_draft(large, [1, 4], seed=1)
    new = _perturbed_draft(large, [1, 4], seed=2)
    pair.save_draft_weights(old, w)
    stat = w.stat()
    monkeypatch.setenv("BILD_CACHE", str(cache))
    monkeypatch.setenv("BILD_DRAFT_WEIGHTS", str(w))
    assert pair.default_draft_weights() == w
    pair.build_pair()
    stamp = pair.draft_stamp()
    assert stamp["sha256"] == pair.file_sha256(w) and stamp["size"] == stat.st_size
    ids = torch.tensor([[1, 4, 7]])
    with torch.no_grad():
        assert torch.allclose(pair.load_pair().small(ids).logits, old(ids).logits, atol=2e-2)
        mtime = (cache / "small" / "config.json").stat().st_mtime_ns
        pair.build_pair()  # same draft: reused
        assert (cache / "small" / "config.json").stat().st_mtime_ns == mtime

        pair.save_draft_weights(new, w)  # same path, same size; restore the old mtime too
        assert w.stat().st_size == stat.st_size
        os.utime(w, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        served = pair.load_pair().small  # load_pair(build=True) notices and rebuilds
        assert pair.draft_stamp()["sha256"] == pair.file_sha256(w) != stamp["sha256"]
        assert torch.allclose(served(ids).logits, new(ids).logits, atol=2e-2)
        assert not torch.allclose(served(ids).logits, old(ids).logits, atol=2e-2)

        # a cache from before the sha256 stamp (size + mtime only) is rebuilt once, then reused
        (cache / "small" / pair.DRAFT_STAMP_NAME).write_text(
            json.dumps({"weights": str(w), "size": stat.st_size, "mtime": int(stat.st_mtime)})
        )
        pair.build_pair()
        assert pair.draft_stamp()["sha256"] == pair.file_sha256(w)


def test_missing_draft_weights(tmp_path, monkeypatch):
    large, cache = _tiny_cache(tmp_path)
    monkeypatch.setenv("BILD_CACHE", str(cache))
    monkeypatch.setenv("BILD_DRAFT_WEIGHTS", str(tmp_path / "absent.safetensors"))
    with pytest.raises(FileNotFoundError, match="BILD_DRAFT_WEIGHTS"):
        pair.build_pair()
    # the packaged draft missing (stripped install): no cache -> a clear error; a built cache -> kept
    monkeypatch.delenv("BILD_DRAFT_WEIGHTS")
    monkeypatch.setattr(pair, "packaged_draft_weights", lambda: tmp_path / "stripped.safetensors")
    with pytest.raises(FileNotFoundError, match="package data"):
        pair.build_pair()
    w = pair.save_draft_weights(_perturbed_draft(large, [0], seed=3), tmp_path / "w.safetensors")
    pair.build_pair(weights=w)
    assert pair.build_pair() == cache


def test_packaged_draft_resolves_inside_the_package():
    path = pair.packaged_draft_weights()
    assert path.parent.name == "assets" and path.parent.parent == __import__("pathlib").Path(pair.__file__).parent
    assert path.name == pair.DRAFT_WEIGHTS_NAME
    if not path.is_file():
        pytest.skip(f"{path} absent (a checkout without the draft asset)")
    assert path.stat().st_size > 1_000_000


def test_prompt_formatting():
    assert pair.format_instruction("Hallo Welt", "translation") == "Translate to English: Hallo Welt"
    assert pair.format_instruction("a b c d", "summarization", max_chars=4) == "Summarize in one sentence: a b"
    assert pair.task_for_file("x/wmt14_de_en/test.jsonl") == "translation"
    assert pair.task_for_file("x/xsum/test.jsonl") == "summarization"


def test_training_instructions_use_dev_not_test(tmp_path):
    (tmp_path / "xsum").mkdir()
    (tmp_path / "xsum" / "dev.jsonl").write_text("".join(f'{{"source": "DEV{i}", "target": "t"}}\n' for i in range(5)))
    (tmp_path / "xsum" / "test.jsonl").write_text('{"source": "TESTDOC", "target": "t"}\n')
    from bild.pairs import recipe

    train = recipe.training_instructions(tmp_path)
    assert not any("TESTDOC" in x for x in train)
    # the dev split in two: the first half trains the draft, the second tunes thresholds, never both
    assert [x for x in train if "DEV" in x] == [f"Summarize in one sentence: DEV{i}" for i in (0, 1)]
    tune = recipe.training_instructions(tmp_path, part="tune")
    assert [x for x in tune if "DEV" in x] == [f"Summarize in one sentence: DEV{i}" for i in (2, 3, 4)]
    assert len([x for x in recipe.training_instructions(tmp_path, part="all") if "DEV" in x]) == 5
    with pytest.raises(ValueError, match="part"):
        recipe.dev_rows(tmp_path / "xsum" / "dev.jsonl", "test")


def test_extra_instructions_use_the_train_half_only(tmp_path):
    """The extra prompt set (0.10's draft) reads only the dev splits' train half: no tune row, no test row, and
    never the demo's default prompt (it stays unseen)."""
    from bild.pairs import recipe

    for name, n in (("wmt14_de_en", 6), ("xsum", 4)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "dev.jsonl").write_text(
            "".join(
                json.dumps({"source": f"{name}DEV{i} " + "w " * (1000 if name == "xsum" else 3), "target": "t"}) + "\n"
                for i in range(n)
            )
        )
        (tmp_path / name / "test.jsonl").write_text('{"source": "TESTDOC", "target": "t"}\n')
    extra = recipe.extra_instructions(tmp_path)
    seen = {w for x in extra for w in x.split() if "DEV" in w}
    assert seen == {"wmt14_de_enDEV0", "wmt14_de_enDEV1", "wmt14_de_enDEV2", "xsumDEV0", "xsumDEV1"}
    assert not any("TESTDOC" in x for x in extra)
    assert sum(x.startswith("Translate to English: wmt14_de_enDEV") for x in extra) == 2  # pairs (0,1), (1,2)
    assert pair.SAMPLE_PROMPT not in extra and not any("travel" in x.lower() for x in extra)
    assert len(extra) == 2 + 2 * 2 + len(recipe.EXTRA_TOPICS) * len(recipe.EXTRA_TEMPLATES)
    # the "general" agreement column's prompts are in no training set, and start with the demo's
    trained = set(extra) | set(recipe.training_instructions(tmp_path))
    assert recipe.HELDOUT_INSTRUCTIONS[0] == pair.SAMPLE_PROMPT and not trained & set(recipe.HELDOUT_INSTRUCTIONS)
    assert not any(t in h for t in recipe.EXTRA_TOPICS for h in recipe.HELDOUT_INSTRUCTIONS)


def test_gen_data_extra_refuses_a_part_it_would_ignore(tmp_path):
    """`gen-data --prompts extra` always reads the train half: --part tune / --per_file are refused before any
    model loads (they would be silently ignored)."""
    for extra in (["--part", "tune"], ["--per_file", "3"]):
        with pytest.raises(SystemExit, match="--prompts extra reads the whole train half"):
            pair_cli.main(
                [
                    "--cache",
                    str(tmp_path / "none"),
                    "gen-data",
                    "--prompts",
                    "extra",
                    "--out",
                    str(tmp_path / "x.pt"),
                    *extra,
                ]
            )
    assert not (tmp_path / "none").exists()


def test_lora_draft_ships_as_a_delta(tmp_path):
    """A LoRA-aligned draft saves as adapters + norms (+ a pruned vocabulary) and loads back equal to the
    trained model, built on the large model's own layers; a plain one still saves its layers."""
    pytest.importorskip("peft")
    from bild.pairs.delta import inject_lora, merge_lora_delta

    large = tiny_large()
    small = pair.make_small_from_large(large, [0, 1, 2])
    inject_lora(small, rank=4)
    trainable = {n for n, p in small.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or "norm" in n for n in trainable)
    assert not any("embed_tokens" in n or "lm_head" in n for n in trainable)
    torch.manual_seed(1)
    with torch.no_grad():  # as if trained: B starts at zero
        for _n, p in small.named_parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    ids = torch.tensor([[1, 4, 7, 9, 30, 41]])
    with torch.no_grad():
        want = small(ids).logits
    vocab = list(range(0, 80, 2)) + [1, 3]
    path = pair.save_draft_weights(small, tmp_path / "d.safetensors", vocabulary=vocab)
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        keys = set(f.keys())
    assert not any(k.endswith("proj.weight") for k in keys)  # no layer weights: they come from `large`
    assert any(k.endswith(".lora_A") for k in keys) and "model.norm.weight" in keys
    back = pair.load_draft_from_weights(large, path)
    from bild.vocabulary import draft_vocabulary

    assert draft_vocabulary(back)[0] == sorted(vocab)
    with torch.no_grad():
        got = back(ids).logits
    sub = torch.tensor(sorted(vocab))
    assert got.shape[-1] == len(vocab)  # the pruned head's rows, in token-id order
    assert torch.allclose(got, want[..., sub], atol=2e-2)  # fp16 storage
    # without the delta the draft would differ: the test can fail
    plain = pair.make_small_from_large(large, [0, 1, 2])
    with torch.no_grad():
        assert not torch.allclose(plain(ids).logits[..., sub], want[..., sub], atol=2e-2)
    # a plain draft keeps the "layers" format; the delta file is smaller
    layers_path = pair.save_draft_weights(pair.make_small_from_large(large, [0, 1, 2]), tmp_path / "l.safetensors")
    assert layers_path.stat().st_size > path.stat().st_size
    with pytest.raises(ValueError, match="no Linear"):
        merge_lora_delta(
            plain,
            {
                "model.layers.9.mlp.up_proj.lora_A": torch.zeros(4, 32),
                "model.layers.9.mlp.up_proj.lora_B": torch.zeros(64, 4),
            },
        )


REAL = pair.default_cache_dir() / "large" / "config.json"


@pytest.mark.skipif(not REAL.exists(), reason=f"real SmolLM2 pair not built ({REAL} absent; run `bild pair build`)")
def test_real_pair_shares_vocab_and_generates():
    if not pair.default_draft_weights().exists() and not (pair.default_cache_dir() / "small").exists():
        pytest.skip("draft weights absent")
    p = pair.load_pair()
    assert (
        p.small.config.vocab_size == p.large.config.vocab_size == len(p.tokenizer)
        or p.small.config.vocab_size == p.large.config.vocab_size
    )
    prompt = pair.chat_prompt(p.tokenizer, "Translate to English: Guten Morgen.")
    ids = p.tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    out = p.small.generate(**ids, max_new_tokens=4, do_sample=False)
    assert out.shape[1] > ids.input_ids.shape[1]


@pytest.mark.skipif(not REAL.exists(), reason=f"real SmolLM2 pair not built ({REAL} absent; run `bild pair build`)")
def test_real_pair_feature_draft_decodes_exactly(tmp_path):
    """A feature draft started from the shipped token draft (its fc reading the features a little), through the
    pair's file format: bound to the real large model it reproduces large greedy and gets drafts accepted."""
    import bild
    from bild.feature_draft import FeatureDraft

    p = pair.load_pair()
    torch.set_num_threads(2)
    draft = FeatureDraft.from_draft(p.small)
    draft.config.bild_source_layers = p.small.config.bild_source_layers
    d = draft.config.hidden_size
    with torch.no_grad():
        draft.fc.weight[:, d:] = 1e-3 * torch.randn(d, d, generator=torch.Generator().manual_seed(0))
    path = pair.save_feature_draft_weights(draft, p.large, tmp_path / "f.safetensors")
    assert pair.is_feature_file(path) and not pair.is_feature_file(pair.default_draft_weights())
    draft = pair.load_feature_draft(p.large, path)
    ids = p.tokenizer(pair.chat_prompt(p.tokenizer, pair.SAMPLE_PROMPT), return_tensors="pt", add_special_tokens=False)
    kw = dict(max_new_tokens=16, do_sample=False)
    ref = p.large.generate(**ids, **kw)
    gen = bild.BiLDGenerator(draft, p.large, fallback_threshold=0.0, max_small_steps=3, verification="exact")
    assert torch.equal(gen.generate(**ids, **kw), ref)
    assert gen.stats.accepted > 0


def test_low_rank_delta_of_a_fine_tuned_draft(tmp_path):
    """A fully fine-tuned draft compressed to a rank-r delta: exact when the change has rank <= r, and saved in
    the delta format it loads back as that draft."""
    from bild.pairs.delta import low_rank_delta

    large = tiny_large()
    base = pair.make_small_from_large(large, [0, 1])
    tuned = pair.make_small_from_large(large, [0, 1])
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, m in tuned.named_modules():
            if isinstance(m, torch.nn.Linear) and ".layers." in name:
                o, i = m.weight.shape
                m.weight.add_(0.1 * torch.randn(o, 2, generator=g) @ torch.randn(2, i, generator=g))  # rank 2
        tuned.model.norm.weight.mul_(1.5)
    ids = torch.tensor([[1, 4, 7, 9, 30]])
    with torch.no_grad():
        want = tuned(ids).logits
    path = pair.save_draft_weights(tuned, tmp_path / "c.safetensors", delta=low_rank_delta(tuned, base, 2))
    back = pair.load_draft_from_weights(large, path)
    with torch.no_grad():
        assert torch.allclose(back(ids).logits, want, atol=2e-2)
        rank1 = pair.load_draft_from_weights(
            large, pair.save_draft_weights(tuned, tmp_path / "r1.safetensors", delta=low_rank_delta(tuned, base, 1))
        )
        assert not torch.allclose(rank1(ids).logits, want, atol=2e-2)  # a rank-2 change needs rank 2


def test_pair_cache_serves_a_delta_draft_with_its_pruned_head(tmp_path, monkeypatch):
    """The shipped format end to end: a cache built from a 'layers' draft (0.5) is rebuilt from a delta draft with
    a pruned head, and load_pair serves that draft (narrow head, its map) and the engine decodes exactly."""
    import bild
    from bild.pairs.delta import low_rank_delta
    from bild.vocabulary import draft_vocabulary

    large, cache = _tiny_cache(tmp_path)
    monkeypatch.setenv("BILD_CACHE", str(cache))
    w = tmp_path / "draft.safetensors"
    monkeypatch.setenv("BILD_DRAFT_WEIGHTS", str(w))
    pair.save_draft_weights(_perturbed_draft(large, [0, 1], seed=1), w)  # an old-format draft
    pair.build_pair()
    tuned = _perturbed_draft(large, [0, 1], seed=2)
    vocab = list(range(0, 60))
    pair.save_draft_weights(
        tuned, w, delta=low_rank_delta(tuned, pair.make_small_from_large(large, [0, 1]), 64), vocabulary=vocab
    )
    p = pair.load_pair()
    assert draft_vocabulary(p.small) == (vocab, 80)
    ids = torch.tensor([[1, 4, 7, 9]])
    with torch.no_grad():
        assert torch.allclose(p.small(ids).logits, tuned(ids).logits[..., :60], atol=2e-2)
    prompt = torch.tensor([[1, 5, 9, 33, 61, 70]])
    kw = dict(attention_mask=torch.ones_like(prompt), max_new_tokens=12, do_sample=False, pad_token_id=0)
    want = p.large.generate(prompt, **kw)
    got = bild.BiLDGenerator(p.small, p.large, fallback_threshold=0.0, max_small_steps=3).generate(prompt, **kw)
    assert torch.equal(got, want)


def test_tune_split_command_writes_the_second_half(tmp_path, monkeypatch):
    import json

    (tmp_path / "data" / "xsum").mkdir(parents=True)
    (tmp_path / "data" / "xsum" / "dev.jsonl").write_text(
        "".join(json.dumps({"source": f"DEV{i}", "target": "t"}) + "\n" for i in range(5))
    )
    monkeypatch.setenv("BILD_DATA", str(tmp_path / "data"))
    assert pair_cli.main(["tune-split", "--out", str(tmp_path / "tune")]) == 0
    rows = [json.loads(x) for x in (tmp_path / "tune" / "xsum.tune.jsonl").read_text().splitlines()]
    assert [r["source"] for r in rows] == ["DEV2", "DEV3", "DEV4"]


def test_demo_drafts_by_prompt_lookup_by_default(tmp_path, monkeypatch, capsys):
    """`bild demo` at its defaults drafts from the small model and prompt lookup, its text is the large model's;
    `--prompt_lookup 0` leaves the lookup out; a negative value is refused before any work."""
    from tokenizers import pre_tokenizers

    from bild.cli import demo

    large, cache = _tiny_cache(tmp_path)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(cache / "large")
    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save_pretrained(cache / "large")
    w = pair.save_draft_weights(pair.make_small_from_large(large, [0, 1]), tmp_path / "w.safetensors")
    monkeypatch.setenv("BILD_CACHE", str(cache))
    monkeypatch.setenv("BILD_DRAFT_WEIGHTS", str(w))
    pair.build_pair(weights=w)
    args = [
        "--prompt",
        " ".join(f"w{i}" for i in [5, 6, 7, 8, 9] * 4),
        "--raw",
        "--max_new_tokens",
        "12",
        "--color",
        "never",
        "--threads",
        "1",
    ]
    assert demo(args) == 0
    out = capsys.readouterr().out
    # the lookup is on (its count is printed; whether it drafts depends on the tiny model's text)
    assert "(identical)" in out and "prompt lookup" in out.split("small model wrote")[1].splitlines()[0]
    assert demo(args + ["--prompt_lookup", "0"]) == 0
    out = capsys.readouterr().out
    assert "(identical)" in out and "prompt lookup" not in out.split("small model wrote")[1].splitlines()[0]
    monkeypatch.setenv("BILD_CACHE", str(tmp_path / "absent"))
    with pytest.raises(SystemExit):
        demo(["--prompt_lookup", "-1"])
    assert "argument --prompt_lookup: must be >= 0" in capsys.readouterr().err
