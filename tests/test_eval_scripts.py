"""End-to-end tests of the evaluation scripts on tiny models built offline.

A tiny word-level tokenizer and two tiny T5 models (a "large" and a "small" one, same vocabulary)
are trained for a few seconds on a toy German->English word-substitution task, so that their
greedy outputs depend on the input and end with EOS. Scripts are called in-process via main(argv).
"""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import random
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

DE = "ich du er sie wir das haus hund katze baum sieht hat ist gross klein rot blau und ein der".split()
EN = "i you he she we the house dog cat tree sees has is big small red blue and a the".split()


def load_script(name: str):
    """Import examples/<name>.py as a module."""
    spec = importlib.util.spec_from_file_location(f"example_{name}", ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _sentence(rng: random.Random, low: int, high: int) -> list[str]:
    return [rng.choice(DE) for _ in range(rng.randint(low, high))]


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _train_t5(tokenizer, pairs, seed: int, d_model: int, layers: int, steps: int):
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(seed)
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=d_model,
        d_ff=2 * d_model,
        d_kv=8,
        num_heads=4,
        num_layers=layers,
        num_decoder_layers=layers,
        dropout_rate=0.0,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
    )
    model = T5ForConditionalGeneration(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(len(pairs), (32,), generator=generator).tolist()
        enc = tokenizer([pairs[i][0] for i in idx], return_tensors="pt", padding=True)
        labels = tokenizer([pairs[i][1] for i in idx], return_tensors="pt", padding=True).input_ids
        labels[labels == tokenizer.pad_token_id] = -100
        loss = model(**enc, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """Paths of a tiny large/small T5 pair (sharing one tokenizer) and tiny JSONL test files."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    root = tmp_path_factory.mktemp("tiny")
    rng = random.Random(0)
    lexicon = dict(zip(DE, EN))
    train = []
    for _ in range(200):
        words = _sentence(rng, 2, 6)
        train.append((" ".join(words), " ".join(lexicon[w] for w in words)))

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(
        DE + EN + ["summarize", ":"], trainers.WordLevelTrainer(special_tokens=["<pad>", "</s>", "<unk>"])
    )
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        large = _train_t5(tokenizer, train, seed=0, d_model=32, layers=2, steps=100)
        small = _train_t5(tokenizer, train, seed=1, d_model=16, layers=1, steps=100)
    finally:
        torch.set_num_threads(threads)
    paths = {}
    for name, model in (("large", large), ("small", small)):
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
        paths[name] = str(root / name)

    rng = random.Random(1)
    translation = []
    for _ in range(8):
        words = _sentence(rng, 2, 6)
        translation.append({"source": " ".join(words), "target": " ".join(lexicon[w] for w in words)})
    summarization = []
    for _ in range(6):
        first, second = _sentence(rng, 4, 7), _sentence(rng, 4, 7)
        summarization.append(
            {
                "source": " ".join(first) + " . " + " ".join(second) + " .",
                "target": " ".join(lexicon[w] for w in first[:3]),
            }
        )
    paths["translation"] = str(_write_jsonl(root / "translation.jsonl", translation))
    paths["summarization"] = str(_write_jsonl(root / "summarization.jsonl", summarization))
    return paths


def common_args(tiny, task: str, out: Path, *extra: str) -> list[str]:
    config = "iwslt2017_de_en" if task == "translation" else "xsum"
    return [
        "--config",
        str(ROOT / "configs" / f"{config}.yaml"),
        "--test_file",
        tiny[task],
        "--large",
        tiny["large"],
        "--small",
        tiny["small"],
        "--tokenizer",
        tiny["large"],
        "--max_target_length",
        "10",
        "--warmup",
        "1",
        "--output_dir",
        str(out),
        *extra,
    ]


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def direct_generate(tiny, sources: list[str], prefix: str = "", model: str = "large") -> list[str]:
    """Independent greedy decoding with plain transformers calls, for comparison."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny[model])
    m = AutoModelForSeq2SeqLM.from_pretrained(tiny[model]).eval()
    outs = []
    for source in sources:
        enc = tokenizer(prefix + source, return_tensors="pt")
        ids = m.generate(**enc, max_new_tokens=10, do_sample=False)
        outs.append(tokenizer.decode(ids[0], skip_special_tokens=True).strip())
    return outs


# ------------------------------------------------------------------------------------------
class FakeStats:
    def __init__(self, new_tokens: int):
        self.new_tokens, self.fallbacks, self.rollbacks = new_tokens, 1, 2
        self.large_forwards, self.small_forwards, self.verify_lengths = 3, new_tokens + 1, [2, 3]

    def as_dict(self):
        return {
            "new_tokens": self.new_tokens,
            "fallbacks": self.fallbacks,
            "rollbacks": self.rollbacks,
            "large_forwards": self.large_forwards,
            "small_forwards": self.small_forwards,
            "verify_lengths": self.verify_lengths,
            "fallback_rate": 0.123,
        }


class FakeBiLD:
    """Stands in for bild.BiLDGenerator: large-model greedy output with fixed counters."""

    created: list[dict] = []

    def __init__(self, small, large, **kwargs):
        self.small, self.large, self.kwargs, self.stats = small, large, kwargs, None
        FakeBiLD.created.append(kwargs)

    def generate(self, input_ids, attention_mask=None, **kwargs):
        out = self.large.generate(input_ids, attention_mask=attention_mask, **kwargs)
        self.stats = FakeStats(new_tokens=int(out.shape[1] - 1))
        return out


@pytest.fixture
def fake_engine(monkeypatch):
    import bild

    FakeBiLD.created = []
    monkeypatch.setattr(bild, "BiLDGenerator", FakeBiLD, raising=False)
    return FakeBiLD


def real_engine_available() -> bool:
    import bild

    return hasattr(bild, "BiLDGenerator") and bild.BiLDGenerator is not FakeBiLD


# ------------------------------------------------------------------------------------------
def test_translation_large_end_to_end(tiny, tmp_path):
    import sacrebleu

    out = tmp_path / "run"
    results = load_script("run_bild_translation").main(
        common_args(tiny, "translation", out, "--mode", "large", "--limit", "6")
    )

    records = read_lines(out / "predictions.jsonl")
    assert [r["id"] for r in records] == list(range(6))
    sources = [json.loads(line)["source"] for line in Path(tiny["translation"]).read_text().splitlines()[:6]]
    assert [r["source"] for r in records] == sources
    assert [r["prediction"] for r in records] == direct_generate(tiny, sources)
    for key in ("reference", "generation_seconds", "new_tokens", "stats"):
        assert key in records[0]
    assert all(1 <= r["new_tokens"] <= 10 and r["generation_seconds"] > 0 for r in records)

    saved = json.loads((out / "results.json").read_text())
    assert saved == json.loads(json.dumps(results))
    expected_bleu = sacrebleu.corpus_bleu([r["prediction"] for r in records], [[r["reference"] for r in records]]).score
    assert saved["quality"]["bleu"] == pytest.approx(expected_bleu)
    assert saved["score"] == pytest.approx(expected_bleu)
    seconds = sorted(r["generation_seconds"] for r in records)
    assert saved["latency"]["p50"] == pytest.approx((seconds[2] + seconds[3]) / 2)
    assert saved["latency"]["mean"] == pytest.approx(sum(seconds) / 6)
    assert saved["tokens_per_second"] == pytest.approx(sum(r["new_tokens"] for r in records) / sum(seconds))
    assert saved["large_calls_per_token"] == 1.0 and saved["fallback_rate"] is None
    assert saved["num_examples"] == 6 and saved["mode"] == "large" and saved["metric"] == "bleu"
    assert saved["versions"]["torch"] == torch.__version__
    assert saved["versions"]["bild"]  # distribution big-little-decoder is installed
    assert saved["device"].startswith("cpu")
    config = json.loads((out / "config.json").read_text())
    assert config["mode"] == "large" and config["source_prefix"] == "" and config["max_target_length"] == 10


def test_summarization_large_rouge(tiny, tmp_path):
    from rouge_score import rouge_scorer

    out = tmp_path / "sum"
    results = load_script("run_bild_summarization").main(common_args(tiny, "summarization", out, "--mode", "large"))
    records = read_lines(out / "predictions.jsonl")
    assert len(records) == 6 and results["metric"] == "rouge"
    sources = [r["source"] for r in records]
    assert [r["prediction"] for r in records] == direct_generate(tiny, sources, prefix="summarize: ")
    scorer = rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=True)
    r1 = [scorer.score(r["reference"], r["prediction"])["rouge1"].fmeasure for r in records]
    rl = [scorer.score(r["reference"], r["prediction"])["rougeL"].fmeasure for r in records]
    assert results["quality"]["rouge1"] == pytest.approx(100 * sum(r1) / 6)
    assert results["score"] == pytest.approx(100 * sum(rl) / 6)
    assert set(results["quality"]) >= {"rouge1", "rouge2", "rougeL", "rougeLsum"}


def test_small_mode_uses_small_model(tiny, tmp_path):
    out = tmp_path / "small"
    no_tokenizer = tmp_path / "no_tokenizer"
    no_tokenizer.mkdir()
    results = load_script("run_bild_translation").main(
        common_args(tiny, "translation", out, "--mode", "small", "--limit", "3", "--tokenizer", str(no_tokenizer))
    )
    records = read_lines(out / "predictions.jsonl")
    assert [r["prediction"] for r in records] == direct_generate(tiny, [r["source"] for r in records], model="small")
    assert results["large_calls_per_token"] == 0.0
    assert results["tokenizer"] == tiny["small"]  # an unloadable --tokenizer falls back to the model's own


def test_assisted_mode_reproduces_large_greedy(tiny, tmp_path):
    out = tmp_path / "assisted"
    results = load_script("run_bild_translation").main(
        common_args(tiny, "translation", out, "--mode", "assisted", "--limit", "3")
    )
    records = read_lines(out / "predictions.jsonl")
    assert [r["prediction"] for r in records] == direct_generate(tiny, [r["source"] for r in records])
    assert results["large_calls_per_token"] is None and results["small"] == tiny["small"]


def test_resume_after_interrupt_matches_uninterrupted(tiny, tmp_path, monkeypatch):
    from bild.evaluation import modeling

    script = load_script("run_bild_translation")
    full = tmp_path / "full"
    script.main(common_args(tiny, "translation", full, "--mode", "large", "--warmup", "0"))
    reference = read_lines(full / "predictions.jsonl")

    original = modeling.BatchGenerator.generate
    calls = {"n": 0}

    def flaky(self, enc):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return original(self, enc)

    out = tmp_path / "interrupted"
    monkeypatch.setattr(modeling.BatchGenerator, "generate", flaky)
    with pytest.raises(KeyboardInterrupt):
        script.main(common_args(tiny, "translation", out, "--mode", "large", "--warmup", "0"))
    monkeypatch.setattr(modeling.BatchGenerator, "generate", original)
    assert [r["id"] for r in read_lines(out / "predictions.jsonl")] == [0, 1, 2]
    with open(out / "predictions.jsonl", "a", encoding="utf-8") as handle:
        handle.write('{"id": 3, "source": "torn wri')  # simulated torn last line

    results = script.main(common_args(tiny, "translation", out, "--mode", "large", "--warmup", "0", "--resume"))
    resumed = read_lines(out / "predictions.jsonl")
    assert [r["id"] for r in resumed] == list(range(8))
    assert [r["prediction"] for r in resumed] == [r["prediction"] for r in reference]
    assert results["resumed_examples"] == 3 and results["num_examples"] == 8


def test_resume_extends_limit_and_keeps_finished(tiny, tmp_path):
    script = load_script("run_bild_translation")
    out = tmp_path / "grow"
    script.main(common_args(tiny, "translation", out, "--mode", "large", "--limit", "3"))
    first = read_lines(out / "predictions.jsonl")
    script.main(common_args(tiny, "translation", out, "--mode", "large", "--limit", "5", "--resume"))
    second = read_lines(out / "predictions.jsonl")
    assert [r["id"] for r in second] == [0, 1, 2, 3, 4]
    assert second[:3] == first  # finished examples (and their timings) are kept as they were
    # a smaller --limit scores fewer examples but keeps the finished ones on disk
    results = script.main(common_args(tiny, "translation", out, "--mode", "large", "--limit", "2", "--resume"))
    assert results["num_examples"] == 2 and results["resumed_examples"] == 2
    assert read_lines(out / "predictions.jsonl") == second


def test_resume_refuses_changed_config_and_existing_dir(tiny, tmp_path, capsys):
    script = load_script("run_bild_translation")
    out = tmp_path / "run"
    script.main(common_args(tiny, "translation", out, "--mode", "large", "--limit", "2"))
    capsys.readouterr()
    with pytest.raises(SystemExit):
        script.main(common_args(tiny, "translation", out, "--mode", "large", "--limit", "2"))
    assert "--resume" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        script.main(
            common_args(
                tiny, "translation", out, "--mode", "large", "--limit", "2", "--resume", "--max_target_length", "7"
            )
        )
    err = capsys.readouterr().err
    assert "max_target_length" in err and "10 -> 7" in err
    # --overwrite starts over
    results = script.main(common_args(tiny, "translation", out, "--mode", "large", "--limit", "1", "--overwrite"))
    assert results["num_examples"] == 1 and len(read_lines(out / "predictions.jsonl")) == 1


def test_bild_mode_plumbing_with_stand_in_engine(tiny, tmp_path, fake_engine):
    out = tmp_path / "bild"
    results = load_script("run_bild_translation").main(
        common_args(
            tiny,
            "translation",
            out,
            "--mode",
            "bild",
            "--limit",
            "4",
            "--fallback_threshold",
            "0.7",
            "--rollback_threshold",
            "inf",
            "--max_small_steps",
            "4",
        )
    )
    assert fake_engine.created[-1] == {
        "fallback_threshold": 0.7,
        "rollback_threshold": math.inf,
        "max_small_steps": 4,
        "verification": "rollback",
    }
    records = read_lines(out / "predictions.jsonl")
    assert all(r["stats"]["fallbacks"] == 1 and r["stats"]["verify_lengths"] == [2, 3] for r in records)
    tokens = sum(r["stats"]["new_tokens"] for r in records)
    assert results["fallback_rate"] == pytest.approx(4 / tokens)
    assert results["rollback_rate"] == pytest.approx(8 / tokens)
    assert results["large_calls_per_token"] == pytest.approx(12 / tokens)
    assert results["engine_totals"]["verify_lengths"] == 20
    assert results["rollback_threshold"] == "inf"
    assert [r["prediction"] for r in records] == direct_generate(tiny, [r["source"] for r in records])

    load_script("run_bild_translation").main(
        common_args(tiny, "translation", tmp_path / "exact", "--mode", "exact", "--limit", "1")
    )
    assert fake_engine.created[-1]["verification"] == "exact"


def test_batched_run_counts_each_batch_once(tiny, tmp_path, fake_engine):
    out = tmp_path / "batched"
    results = load_script("run_bild_translation").main(
        common_args(tiny, "translation", out, "--mode", "bild", "--limit", "5", "--batch_size", "2")
    )
    records = read_lines(out / "predictions.jsonl")
    assert [r["batch_first_id"] for r in records] == [0, 0, 2, 2, 4]
    assert results["fallback_rate"] == pytest.approx(3 / sum(r["stats"]["new_tokens"] for r in records[::2]))
    assert results["total_generation_seconds"] == pytest.approx(sum(r["batch_seconds"] for r in records[::2]))


@pytest.mark.skipif(not real_engine_available(), reason="bild.BiLDGenerator (the engine) is not available yet")
def test_real_engine_bild_and_exact(tiny, tmp_path):
    script = load_script("run_bild_translation")
    large = script.main(common_args(tiny, "translation", tmp_path / "large", "--mode", "large"))
    exact = script.main(common_args(tiny, "translation", tmp_path / "exact", "--mode", "exact"))
    bild_run = script.main(
        common_args(
            tiny,
            "translation",
            tmp_path / "bild",
            "--mode",
            "bild",
            "--fallback_threshold",
            "0.6",
            "--rollback_threshold",
            "3",
        )
    )
    preds = {
        name: [r["prediction"] for r in read_lines(tmp_path / name / "predictions.jsonl")]
        for name in ("large", "exact", "bild")
    }
    assert preds["exact"] == preds["large"]  # greedy speculative decoding reproduces the large model
    assert exact["score"] == pytest.approx(large["score"])
    records = read_lines(tmp_path / "bild" / "predictions.jsonl")
    assert all(isinstance(r["stats"], dict) and r["stats"] for r in records)
    tokens = sum(r["stats"]["new_tokens"] for r in records)
    assert bild_run["fallback_rate"] == pytest.approx(sum(r["stats"]["fallbacks"] for r in records) / tokens)
    assert bild_run["rollback_rate"] == pytest.approx(sum(r["stats"]["rollbacks"] for r in records) / tokens)
    assert bild_run["large_calls_per_token"] == pytest.approx(
        sum(r["stats"]["large_forwards"] for r in records) / tokens
    )
    assert bild_run["large_calls_per_token"] > 0


@pytest.mark.skipif(not real_engine_available(), reason="bild.BiLDGenerator (the engine) is not available yet")
def test_prompt_lookup_flag_reaches_the_engine(tiny, tmp_path):
    """`--prompt_lookup N` drafts by lookup too: exact mode keeps the large model's text; the engine's
    statistics show lookup drafts (the tiny task copies source words), and bild mode runs the rollback rule."""
    script = load_script("run_bild_translation")
    script.main(common_args(tiny, "translation", tmp_path / "large", "--mode", "large"))
    script.main(
        common_args(
            tiny,
            "translation",
            tmp_path / "exact",
            "--mode",
            "exact",
            "--prompt_lookup",
            "3",
            "--fallback_threshold",
            "0.0",
            "--max_small_steps",
            "3",
        )
    )
    preds = {n: [r["prediction"] for r in read_lines(tmp_path / n / "predictions.jsonl")] for n in ("large", "exact")}
    assert preds["exact"] == preds["large"]
    drafted = [r["stats"]["drafted_by"] for r in read_lines(tmp_path / "exact" / "predictions.jsonl")]
    assert sum(d.get("lookup", 0) for d in drafted) > 0
    saved = json.loads((tmp_path / "exact" / "config.json").read_text())
    assert saved["prompt_lookup"] == 3


def test_sweep_writes_csv_and_png_and_resumes(tiny, tmp_path, fake_engine, monkeypatch):
    import matplotlib.image

    from bild.evaluation import modeling

    sweep = load_script("sweep_thresholds")
    out = tmp_path / "sweep"
    argv = [
        "--config",
        str(ROOT / "configs" / "wmt14_de_en.yaml"),
        "--test_file",
        tiny["translation"],
        "--large",
        tiny["large"],
        "--small",
        tiny["small"],
        "--tokenizer",
        tiny["large"],
        "--max_target_length",
        "10",
        "--warmup",
        "1",
        "--limit",
        "3",
        "--output_dir",
        str(out),
        "--fallback",
        "0.5,0.9",
        "--rollback",
        "2,inf",
    ]
    calls = []  # (point, first source) of every generate call, in order
    real_generate = modeling.BatchGenerator.generate

    def logged(self, enc):
        calls.append((Path(self.cfg.output_dir).name, int(enc["input_ids"].shape[0])))
        return real_generate(self, enc)

    monkeypatch.setattr(modeling.BatchGenerator, "generate", logged)
    rows = sweep.main(argv)
    # interleaved: after each point's warm-up call, every point runs example k before any runs example k + 1,
    # in an order rotated from example to example
    points = ["large", "bild_fb0.5_rb2", "bild_fb0.5_rbinf", "bild_fb0.9_rb2", "bild_fb0.9_rbinf"]
    assert [name for name, _ in calls[:5]] == points  # warm-up
    assert [name for name, _ in calls[5:]] == [points[(k + m) % 5] for k in range(3) for m in range(5)]

    with open(out / "sweep.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == 5 and list(table[0]) == list(sweep_columns())
    assert table[0]["mode"] == "large" and float(table[0]["speedup"]) == pytest.approx(1.0)
    assert {(r["fallback_threshold"], r["rollback_threshold"]) for r in table[1:]} == {
        ("0.5", "2.0"),
        ("0.5", "inf"),
        ("0.9", "2.0"),
        ("0.9", "inf"),
    }
    assert any(r["pareto"] == "True" for r in table)
    base = json.loads((out / "large" / "results.json").read_text())
    point = json.loads((out / "bild_fb0.9_rbinf" / "results.json").read_text())
    row = next(r for r in table if r["run_dir"].endswith("bild_fb0.9_rbinf"))
    assert float(row["speedup"]) == pytest.approx(base["latency"]["mean"] / point["latency"]["mean"])
    per_example = [
        b["generation_seconds"] / p["generation_seconds"]
        for b, p in zip(
            read_lines(out / "large" / "predictions.jsonl"), read_lines(out / "bild_fb0.9_rbinf" / "predictions.jsonl")
        )
    ]
    assert float(row["speedup_median"]) == pytest.approx(sorted(per_example)[1])  # the median of 3
    assert float(row["score"]) == pytest.approx(point["score"])
    png = out / "sweep.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(png)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert len(rows) == 5

    # Resuming a finished sweep regenerates nothing and reproduces the table.
    def no_generate(self, enc):
        raise AssertionError("a finished sweep point was generated again")

    monkeypatch.setattr(modeling.BatchGenerator, "generate", no_generate)
    again = sweep.main(argv + ["--resume"])
    assert [r["score"] for r in again] == [r["score"] for r in rows]
    assert [r["speedup"] for r in again] == pytest.approx([r["speedup"] for r in rows])


def sweep_columns():
    from bild.evaluation.sweep import CSV_COLUMNS

    return CSV_COLUMNS


def test_decoder_only_pair_strips_prompt(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    from bild.evaluation import runner

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(DE + EN, trainers.WordLevelTrainer(special_tokens=["<pad>", "</s>", "<unk>"]))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", unk_token="<unk>")
    paths = {}
    for name, seed in (("large", 0), ("small", 1)):
        torch.manual_seed(seed)
        model = GPT2LMHeadModel(
            GPT2Config(
                vocab_size=len(tokenizer),
                n_embd=16,
                n_layer=1,
                n_head=2,
                n_positions=64,
                bos_token_id=1,
                eos_token_id=1,
            )
        )
        model.save_pretrained(tmp_path / name)
        tokenizer.save_pretrained(tmp_path / name)
        paths[name] = str(tmp_path / name)
    data = _write_jsonl(
        tmp_path / "d.jsonl",
        [{"source": "das haus ist rot", "target": "the house is red"}, {"source": "ein hund", "target": "a dog"}],
    )
    out = tmp_path / "run"
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
            "--source_prefix",
            "ich ",
            "--output_dir",
            str(out),
        ],
        task="translation",
    )
    records = read_lines(out / "predictions.jsonl")
    m = AutoModelForCausalLM.from_pretrained(paths["large"]).eval()
    t = AutoTokenizer.from_pretrained(paths["large"])
    for record in records:
        enc = t("ich " + record["source"], return_tensors="pt")
        ids = m.generate(**enc, max_new_tokens=5, do_sample=False, pad_token_id=t.eos_token_id)
        new = ids[0, enc["input_ids"].shape[1] :]
        assert record["prediction"] == t.decode(new, skip_special_tokens=True).strip()
        assert record["new_tokens"] == len(new)  # generation stops at the first EOS, so every token counts
    assert results["num_examples"] == 2


def test_accelerate_state_single_process():
    pytest.importorskip("accelerate")
    from bild.evaluation.distributed import AccelerateState, LocalState

    for state in (LocalState(), AccelerateState()):
        with state.split_between_processes([1, 2, 3]) as shard:
            assert list(shard) == [1, 2, 3]
        assert state.gather_object([{"id": 1}]) == [{"id": 1}]
        assert state.is_main_process and state.num_processes == 1
        state.wait_for_everyone()


def test_bild_and_exact_modes_default_to_the_adaptive_policy(tiny, tmp_path, fake_engine):
    for mode, verification in (("bild", "rollback"), ("exact", "exact")):
        results = load_script("run_bild_translation").main(
            common_args(tiny, "translation", tmp_path / mode, "--mode", mode, "--limit", "1")
        )
        created = fake_engine.created[-1]
        assert created["fallback_threshold"] == "auto" and created["max_small_steps"] == "auto"
        assert created["verification"] == verification
        assert results["fallback_threshold"] == "auto" and results["max_small_steps"] == "auto"
