"""Prompts of the evaluation scripts: prompt_template, and the chat template of instruct models.

A tiny word-level tokenizer with a chat template (built offline) and two tiny GPT-2 models stand
in for an instruct pair such as the offline SmolLM2 one.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from bild.evaluation import config as C
from bild.evaluation import modeling, runner

ROOT = Path(__file__).resolve().parents[1]
WORDS = "das haus ist rot ein hund the house is red a dog Translate to English Summarize in one sentence".split()
SPECIAL = ["<pad>", "</s>", "<unk>", "<s>", "<|user|>", "<|end|>", "<|assistant|>"]
TEMPLATE = (
    "{{ '<s>' }}{% for m in messages %}<|user|> {{ m['content'] }} <|end|> {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
INSTRUCT = "Translate to English: {source}"


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def chat_tokenizer(with_template: bool = True):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(WORDS + [":"], trainers.WordLevelTrainer(special_tokens=SPECIAL))
    # plain tokenisation adds a BOS, as many instruct tokenizers do; chat text carries its own
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 3)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", bos_token="<s>"
    )
    if with_template:
        tokenizer.chat_template = TEMPLATE
    return tokenizer


def make_cfg(*argv: str, text: str | None = None, tmp_path: Path | None = None) -> C.EvalConfig:
    args = list(argv)
    if text is not None:
        path = tmp_path / "c.yaml"
        path.write_text(text)
        args = ["--config", str(path), *args]
    return C.config_from_namespace(C.build_parser("translation").parse_args(args), "translation")


def generator(cfg, tokenizer, is_encoder_decoder=False):
    """A BatchGenerator for --mode large over stand-in models (encode/prompts only need the tokenizer)."""
    cfg.mode = "large"
    model = SimpleNamespace(generation_config=SimpleNamespace(eos_token_id=1))
    bundle = modeling.ModelBundle(tokenizer, model, model, is_encoder_decoder, torch.device("cpu"))
    return modeling.BatchGenerator(cfg, bundle)


# --- configuration -----------------------------------------------------------------------------
def test_chat_template_flag_and_config_key(tmp_path):
    assert make_cfg().chat_template is True and make_cfg().prompt_template == "{source}"
    assert make_cfg("--no_chat_template").chat_template is False
    assert make_cfg(text="chat_template: false\n", tmp_path=tmp_path).chat_template is False
    assert make_cfg("--chat_template", text="chat_template: false\n", tmp_path=tmp_path).chat_template is True
    assert make_cfg("--no_chat_template", text="chat_template: true\n", tmp_path=tmp_path).chat_template is False
    with pytest.raises(C.ConfigError, match="chat_template"):
        make_cfg(text="chat_template: maybe\n", tmp_path=tmp_path)
    cfg = make_cfg("--prompt_template", "Translate: {source} now", "--source_prefix", "p ")
    assert modeling.task_prompt(cfg, "x") == "Translate: p x now"


def test_prompt_template_must_hold_the_source(tmp_path, capsys):
    data = tmp_path / "d.jsonl"
    data.write_text('{"source": "a", "target": "b"}\n')
    with pytest.raises(SystemExit):
        runner.main(
            [
                "--test_file",
                str(data),
                "--mode",
                "large",
                "--large",
                str(tmp_path),
                "--prompt_template",
                "Translate to English:",
                "--output_dir",
                str(tmp_path / "r"),
            ]
        )
    assert "--prompt_template must contain {source}" in capsys.readouterr().err


def test_shipped_configs_state_their_prompt_template():
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        values = C.load_config_file(path)
        assert values["prompt_template"] == "{source}", path  # the paper's mT5/T5: prefix + text as is
        assert values["chat_template"] is True, path
        assert "--prompt_template" in path.read_text(), path  # and say what an instruct model would use


def test_runs_saved_before_the_prompt_keys_still_resume():
    saved = C.EvalConfig(mode="large").to_dict()
    del saved["prompt_template"], saved["chat_template"]
    assert C.differing_keys(saved, C.EvalConfig(mode="large").to_dict()) == []
    changed = C.EvalConfig(mode="large", chat_template=False).to_dict()
    assert C.differing_keys(saved, changed) == [("chat_template", True, False)]


# --- prompt text ---------------------------------------------------------------------------------
def test_prompt_text_with_and_without_the_chat_template():
    tok = chat_tokenizer()
    sources = ["das haus ist rot", "ein hund"]
    on = generator(make_cfg("--prompt_template", INSTRUCT), tok)
    assert on.chat_template is True
    assert on.prompts(sources) == [
        "<s><|user|> Translate to English: das haus ist rot <|end|> <|assistant|>",
        "<s><|user|> Translate to English: ein hund <|end|> <|assistant|>",
    ]
    # the same text the offline pair's chat_prompt gives
    from bild.pairs.smollm2 import chat_prompt

    assert on.prompts(sources[:1]) == [chat_prompt(tok, "Translate to English: das haus ist rot")]
    enc = on.encode(sources[:1])
    assert enc["input_ids"][0].tolist() == tok(on.prompts(sources[:1])[0], add_special_tokens=False).input_ids
    assert enc["input_ids"][0].tolist().count(tok.bos_token_id) == 1  # no second BOS from tokenisation

    off = generator(make_cfg("--prompt_template", INSTRUCT, "--no_chat_template"), tok)
    assert off.chat_template is False
    assert off.prompts(sources) == ["Translate to English: das haus ist rot", "Translate to English: ein hund"]
    assert off.encode(sources[:1])["input_ids"][0].tolist() == tok("Translate to English: das haus ist rot").input_ids

    # no template on the tokenizer, or an encoder-decoder model: the plain prompt
    assert generator(make_cfg(), chat_tokenizer(with_template=False)).prompts(["ein hund"]) == ["ein hund"]
    assert generator(make_cfg(), tok, is_encoder_decoder=True).prompts(["ein hund"]) == ["ein hund"]


def test_chat_template_truncates_the_source_not_the_generation_prompt():
    tok = chat_tokenizer()
    gen = generator(make_cfg("--prompt_template", INSTRUCT, "--max_source_length", "2"), tok)
    assert gen.prompts(["das haus ist rot"]) == ["<s><|user|> Translate to English: das haus <|end|> <|assistant|>"]


# --- end to end ------------------------------------------------------------------------------------
def test_runner_sends_chat_formatted_prompts(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

    tok = chat_tokenizer()
    paths = {}
    for name, seed in (("large", 0), ("small", 1)):
        torch.manual_seed(seed)
        model = GPT2LMHeadModel(
            GPT2Config(
                vocab_size=len(tok),
                n_embd=16,
                n_layer=1,
                n_head=2,
                n_positions=64,
                bos_token_id=3,
                eos_token_id=1,
                pad_token_id=0,
            )
        )
        model.save_pretrained(tmp_path / name)
        tok.save_pretrained(tmp_path / name)
        paths[name] = str(tmp_path / name)
    data = tmp_path / "d.jsonl"
    data.write_text(
        "".join(
            json.dumps(r) + "\n"
            for r in [
                {"source": "das haus ist rot", "target": "the house is red"},
                {"source": "ein hund", "target": "a dog"},
            ]
        )
    )
    large = AutoModelForCausalLM.from_pretrained(paths["large"]).eval()

    def expected(text: str, special: bool) -> str:
        enc = tok(text, return_tensors="pt", add_special_tokens=special)
        ids = large.generate(**enc, max_new_tokens=5, do_sample=False, pad_token_id=0)
        return tok.decode(ids[0, enc["input_ids"].shape[1] :], skip_special_tokens=True).strip()

    seen = []  # the token ids each timed generate call received
    original = modeling.BatchGenerator.generate

    def spy(self, enc):
        seen.append(enc["input_ids"][0].tolist())
        return original(self, enc)

    monkeypatch.setattr(modeling.BatchGenerator, "generate", spy)
    for flags, chat in (([], True), (["--no_chat_template"], False)):
        seen.clear()
        out = tmp_path / f"run_chat{chat}"
        results = runner.main(
            [
                "--test_file",
                str(data),
                "--large",
                paths["large"],
                "--small",
                paths["small"],
                "--mode",
                "large",
                "--max_target_length",
                "5",
                "--warmup",
                "0",
                "--batch_size",
                "1",
                "--prompt_template",
                INSTRUCT,
                "--output_dir",
                str(out),
                *flags,
            ],
            task="translation",
        )
        assert results["chat_template"] is chat and results["prompt_template"] == INSTRUCT
        records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
        assert len(seen) == len(records) == 2
        for record, ids in zip(records, seen):
            prompt = INSTRUCT.format(source=record["source"])
            text = f"<s><|user|> {prompt} <|end|> <|assistant|>" if chat else prompt
            assert ids == tok(text, add_special_tokens=not chat).input_ids
            assert record["prediction"] == expected(text, special=not chat)
        assert json.loads((out / "config.json").read_text())["chat_template"] is chat
