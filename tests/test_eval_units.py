"""Unit tests of the evaluation helpers against values computed by hand."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest
import torch

from bild.evaluation import config as C
from bild.evaluation.metrics import bleu, engine_totals, quality, rouge, split_sentences, summarize_records
from bild.evaluation.modeling import count_new_tokens
from bild.evaluation.runner import read_predictions
from bild.evaluation.sweep import pareto_mask, parse_values
from bild.evaluation.timing import latency_summary, percentile, timed, tokens_per_second


# --- metrics -------------------------------------------------------------------------------------
def test_bleu_identical_is_100():
    assert bleu(["the cat sat on the mat"], ["the cat sat on the mat"])["bleu"] == pytest.approx(100.0)


def test_bleu_brevity_penalty_by_hand():
    # all n-gram precisions are 1; hypothesis 4 tokens, reference 5 -> BP = exp(1 - 5/4)
    assert bleu(["a b c d"], ["a b c d e"])["bleu"] == pytest.approx(100 * math.exp(-0.25))


def test_bleu_no_overlap_is_zero():
    assert bleu(["w x y z"], ["a b c d"])["bleu"] == pytest.approx(0.0)


def test_rouge1_by_hand():
    # prediction "the cat sat", reference "the cat is here": 2 shared unigrams,
    # P = 2/3, R = 2/4, F = 2PR/(P+R) = 4/7
    scores = rouge(["the cat sat"], ["the cat is here"])
    assert scores["rouge1"] == pytest.approx(100 * 4 / 7)
    assert scores["rouge2"] == pytest.approx(100 * 2 * (1 / 2 * 1 / 3) / (1 / 2 + 1 / 3))  # "the cat": P=1/2, R=1/3
    assert scores["rougeL"] == pytest.approx(100 * 4 / 7)


def test_rouge_uses_stemmer_and_averages():
    # "cats" stems to "cat": identical after stemming -> 100; second pair shares nothing -> 0
    scores = rouge(["cats running", "x"], ["cat run", "y"])
    assert scores["rouge1"] == pytest.approx(50.0)


def test_rouge_lsum_splits_sentences():
    # LCS per sentence union: summary-level LCS finds both sentences even when their order is swapped
    pred, ref = "b c. a d.", "a d. b c."
    scores = rouge([pred], [ref])
    assert scores["rougeLsum"] == pytest.approx(100.0)
    assert scores["rougeL"] < 100.0


def test_split_sentences():
    assert split_sentences("One here. Two there! Three?") == "One here.\nTwo there!\nThree?"
    assert split_sentences("first line\n\nsecond line ") == "first line\nsecond line"


def test_quality_headline_score():
    assert quality("bleu", ["a b c d"], ["a b c d"])["score"] == pytest.approx(100.0)
    assert quality("rouge", ["the cat sat"], ["the cat is here"])["score"] == pytest.approx(100 * 4 / 7)
    with pytest.raises(ValueError):
        quality("meteor", ["a"], ["a"])


# --- timing --------------------------------------------------------------------------------------
def test_percentiles_by_hand():
    values = [float(v) for v in range(10, 0, -1)]  # 1..10, unsorted
    assert percentile(values, 50) == pytest.approx(5.5)  # position 4.5 -> between 5 and 6
    assert percentile(values, 90) == pytest.approx(9.1)  # position 8.1 -> 9 + 0.1
    assert percentile(values, 0) == 1.0 and percentile(values, 100) == 10.0
    assert percentile([3.0], 90) == 3.0
    assert math.isnan(percentile([], 50))


def test_latency_summary_and_throughput():
    summary = latency_summary([0.1, 0.2, 0.3, 0.4])
    assert summary["mean"] == pytest.approx(0.25)
    assert summary["p50"] == pytest.approx(0.25)
    assert summary["p90"] == pytest.approx(0.37)  # position 2.7 -> 0.3 + 0.7 * 0.1
    assert summary["n"] == 4
    assert tokens_per_second(30, 1.5) == pytest.approx(20.0)
    assert math.isnan(tokens_per_second(5, 0.0))


def test_timed_measures_only_the_call():
    result, seconds = timed(lambda: time.sleep(0.05) or 7, "cpu")
    assert result == 7 and 0.05 <= seconds < 1.0


def test_count_new_tokens():
    eos = 1
    generated = torch.tensor([[5, 6, 1, 0, 0], [5, 6, 7, 8, 9], [1, 0, 0, 0, 0], [0, 0, 1, 0, 0]])
    # up to and including the first EOS; no EOS -> whole row; a generated pad before EOS counts
    assert count_new_tokens(generated, [eos]) == [3, 5, 1, 3]
    assert count_new_tokens(generated, [7, 1]) == [3, 3, 1, 3]


# --- record aggregation ----------------------------------------------------------------------------
def _record(i, first, seconds, tokens, stats=None, size=1):
    return {
        "id": i,
        "batch_first_id": first,
        "generation_seconds": seconds / size,
        "batch_seconds": seconds,
        "new_tokens": tokens,
        "stats": stats,
    }


def test_summarize_records_dedups_batches():
    stats_a = {
        "new_tokens": 10,
        "fallbacks": 2,
        "rollbacks": 1,
        "large_forwards": 4,
        "drafted": 8,
        "accepted": 6,
        "verify_lengths": [3, 2],
        "fallback_rate": 0.2,
    }
    stats_b = {
        "new_tokens": 5,
        "fallbacks": 1,
        "rollbacks": 0,
        "large_forwards": 2,
        "drafted": 4,
        "accepted": 4,
        "verify_lengths": [4],
        "fallback_rate": 0.2,
    }
    records = [_record(0, 0, 2.0, 6, stats_a, 2), _record(1, 0, 2.0, 4, stats_a, 2), _record(2, 2, 1.0, 5, stats_b)]
    totals = engine_totals(records)
    assert totals == {
        "new_tokens": 15,
        "fallbacks": 3,
        "rollbacks": 1,
        "large_forwards": 6,
        "drafted": 12,
        "accepted": 10,
        "verify_lengths": 9,
    }
    out = summarize_records(records, "bild")
    assert out["total_generation_seconds"] == pytest.approx(3.0)
    assert out["tokens_per_second"] == pytest.approx(15 / 3.0)
    assert out["latency"]["mean"] == pytest.approx((1.0 + 1.0 + 1.0) / 3)
    assert out["fallback_rate"] == pytest.approx(3 / 15)
    assert out["rollback_rate"] == pytest.approx(1 / 15)
    assert out["large_calls_per_token"] == pytest.approx(6 / 15)
    assert out["acceptance_rate"] == pytest.approx(10 / 12)


def test_summarize_records_baselines():
    records = [_record(0, 0, 0.5, 4), _record(1, 1, 1.5, 6)]
    assert summarize_records(records, "large")["large_calls_per_token"] == 1.0
    assert summarize_records(records, "small")["large_calls_per_token"] == 0.0
    assert summarize_records(records, "assisted")["large_calls_per_token"] is None
    assert summarize_records(records, "large")["tokens_per_second"] == pytest.approx(5.0)


# --- sweep helpers -------------------------------------------------------------------------------
def test_pareto_mask_by_hand():
    speedups = [1.0, 1.5, 1.4, 2.0, 2.0, 0.9]
    scores = [30.0, 29.0, 28.0, 25.0, 24.0, 31.0]
    # (1.4, 28) is beaten by (1.5, 29); (2.0, 24) by (2.0, 25); the others trade off
    assert pareto_mask(speedups, scores) == [True, True, False, True, False, True]
    assert pareto_mask([1.0, 1.0], [5.0, 5.0]) == [True, True]  # ties do not dominate


def test_parse_values():
    assert parse_values("0.3, 0.5,0.7", "--fallback", float) == [0.3, 0.5, 0.7]
    assert parse_values("1,inf", "--rollback", C.parse_threshold) == [1.0, math.inf]
    with pytest.raises(C.ConfigError, match="--rollback"):
        parse_values("1,two", "--rollback", C.parse_threshold)
    with pytest.raises(C.ConfigError, match="--fallback"):
        parse_values(" , ", "--fallback", float)


def test_sweep_plan_with_prompt_lookup_and_auto_fallback(tmp_path):
    """`--prompt_lookup` goes to every threshold point (named in its folder) and not to the large baseline;
    `--fallback auto` is a point (the adaptive policy)."""
    from bild.evaluation.sweep import plan_sweep

    data = tmp_path / "d.jsonl"
    data.write_text('{"source": "a", "target": "b"}\n')
    configs, _, budget = plan_sweep(
        [
            "--test_file",
            str(data),
            "--large",
            "org/l",
            "--small",
            "org/s",
            "--fallback",
            "auto,0.5",
            "--rollback",
            "3",
            "--prompt_lookup",
            "10",
            "--output_dir",
            str(tmp_path / "sw"),
        ]
    )
    assert [(c.mode, c.prompt_lookup, c.fallback_threshold) for c in configs] == [
        ("large", 0, "auto"),
        ("bild", 10, "auto"),
        ("bild", 10, 0.5),
    ]
    assert [Path(c.output_dir).name for c in configs] == [
        "large",
        "bild_fbauto_rb3_lookup10",
        "bild_fb0.5_rb3_lookup10",
    ]
    assert budget == 0.5  # the default quality budget of the pick


def test_pick_within_budget():
    from bild.evaluation.sweep import pick_within_budget

    rows = [
        {"score": 20.0, "speedup_median": 1.0},
        {"score": 19.4, "speedup_median": 2.0},
        {"score": 19.5, "speedup_median": 1.5},
        {"score": 21.0, "speedup_median": 1.2},
    ]
    assert pick_within_budget(rows, 0.5) is rows[2]  # 2.0x is 0.6 below; 1.5x is the fastest within 0.5
    assert pick_within_budget(rows, 1.0) is rows[1]
    assert pick_within_budget(rows[:2], 0.5) is None


# --- config --------------------------------------------------------------------------------------
def _cfg(tmp_path, text, *argv, task="translation"):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    parser = C.build_parser(task)
    return C.config_from_namespace(parser.parse_args(["--config", str(path), *argv]), task)


def test_flags_override_file_and_paper_setting(tmp_path):
    text = (
        "name: demo\nfallback_threshold: 0.4\nrollback_threshold: inf\nsmall: org/s\nlarge: org/l\n"
        "paper_settings:\n  aligned: {small: org/s-aligned, fallback_threshold: 0.9, rollback_threshold: 3}\n"
    )
    cfg = _cfg(tmp_path, text)
    assert (cfg.fallback_threshold, cfg.rollback_threshold, cfg.small) == (0.4, math.inf, "org/s")
    assert cfg.metric == "bleu" and cfg.output_dir.endswith("demo/bild_fb0.4_rbinf")
    cfg = _cfg(tmp_path, text, "--paper_setting", "aligned")
    assert (cfg.fallback_threshold, cfg.rollback_threshold, cfg.small) == (0.9, 3.0, "org/s-aligned")
    cfg = _cfg(tmp_path, text, "--paper_setting", "aligned", "--rollback_threshold", "2", "--batch_size", "4")
    assert (cfg.fallback_threshold, cfg.rollback_threshold, cfg.batch_size) == (0.9, 2.0, 4)
    with pytest.raises(C.ConfigError, match="--paper_setting"):
        _cfg(tmp_path, text, "--paper_setting", "unaligned")
    assert _cfg(tmp_path, "name: demo2\n", task="summarization").metric == "rouge"


def test_differing_keys_ignores_resume_safe_keys():
    a = C.EvalConfig(mode="large", limit=3, warmup=2, output_dir="x").to_dict()
    b = C.EvalConfig(mode="large", limit=10, warmup=0, output_dir="y", resume=True).to_dict()
    assert C.differing_keys(a, b) == []
    c = C.EvalConfig(mode="bild", limit=3, output_dir="x").to_dict()
    assert C.differing_keys(a, c) == [("mode", "large", "bild")]


def test_shipped_configs_are_valid():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "configs"
    expected = {
        "iwslt2017_de_en": ("iwslt2017", "iwslt2017-de-en", "bleu", "translation"),
        "wmt14_de_en": ("wmt14", "de-en", "bleu", "translation"),
        "xsum": ("xsum", None, "rouge", "summarization"),
        "cnn_dailymail": ("cnn_dailymail", "3.0.0", "rouge", "summarization"),
    }
    for name, (dataset, subset, metric, task) in expected.items():
        values = C.load_config_file(root / f"{name}.yaml")
        assert (values["dataset_name"], values.get("dataset_config"), values["metric"], values["task"]) == (
            dataset,
            subset,
            metric,
            task,
        )
        assert values["large"].startswith("kssteven/") and values["small"].startswith("kssteven/")
        assert set(values["paper_settings"]) == {"note", "unaligned", "aligned"}
        C.validate_paper_settings(values["paper_settings"])
        assert values["source_prefix"] == ("summarize: " if task == "summarization" else "")


def test_read_predictions_skips_torn_and_bad_lines(tmp_path):
    (tmp_path / "predictions.jsonl").write_text('{"id": 0, "prediction": "a"}\nnot json\n{"id": 1, "pred')
    (tmp_path / "predictions.rank1.jsonl").write_text('{"id": 2, "prediction": "c"}\n{"id": 0, "prediction": "dup"}\n')
    records = read_predictions(tmp_path)
    assert sorted(records) == [0, 2] and records[0]["prediction"] == "a"
