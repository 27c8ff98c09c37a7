"""Bad input fails with a clear message naming the argument, before any model is loaded."""

from __future__ import annotations

import importlib.util
import json
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def no_model_loading(monkeypatch):
    """Any attempt to load a model or tokenizer fails the test."""
    import transformers

    from bild.evaluation import modeling

    def fail(*args, **kwargs):
        raise AssertionError(f"a model/tokenizer load was attempted: {args!r}")

    for cls in (
        transformers.AutoModelForSeq2SeqLM,
        transformers.AutoModelForCausalLM,
        transformers.AutoTokenizer,
        transformers.AutoConfig,
    ):
        monkeypatch.setattr(cls, "from_pretrained", fail)
    monkeypatch.setattr(modeling, "load_models", fail)


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"source": "das haus", "target": "the house"}\n{"source": "ein hund", "target": "a dog"}\n')
    return path


def run_error(capsys, script: str, argv: list[str]) -> str:
    """Run a script expecting exit status 2 and return its error message."""
    with pytest.raises(SystemExit) as info:
        load_script(script).main(argv)
    assert info.value.code == 2
    return capsys.readouterr().err


def base(data, tmp_path, *extra):
    return [
        "--test_file",
        str(data),
        "--large",
        "org/large-model",
        "--small",
        "org/small-model",
        "--output_dir",
        str(tmp_path / "out"),
        *extra,
    ]


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--mode", "medium"], "--mode"),
        (["--fallback_threshold", "1.5"], "--fallback_threshold"),
        (["--fallback_threshold", "-0.1"], "--fallback_threshold"),
        (["--fallback_threshold", "nan"], "--fallback_threshold"),
        (["--rollback_threshold", "-1"], "--rollback_threshold"),
        (["--rollback_threshold", "lots"], "--rollback_threshold"),
        (["--batch_size", "0"], "--batch_size"),
        (["--limit", "0"], "--limit"),
        (["--warmup", "-1"], "--warmup"),
        (["--max_small_steps", "0"], "--max_small_steps"),
        (["--dtype", "float8"], "--dtype"),
        (["--device", "tpu"], "--device"),
        (["--metric", "meteor"], "--metric"),
        (["--mode", "assisted", "--batch_size", "2"], "--batch_size"),
        (["--resume", "--overwrite"], "--resume"),
        (["--prompt_lookup", "-1"], "--prompt_lookup"),
        (["--prompt_lookup", "4", "--mode", "large"], "--prompt_lookup"),
    ],
)
def test_bad_flag_values(capsys, data, tmp_path, argv, expected):
    err = run_error(capsys, "run_bild_translation", base(data, tmp_path, *argv))
    assert expected in err
    assert not (tmp_path / "out").exists()


def test_infinite_rollback_is_accepted(capsys, data, tmp_path):
    # validation passes, so the run proceeds to model loading, which the fixture forbids
    with pytest.raises(AssertionError, match="load was attempted"):
        load_script("run_bild_translation").main(base(data, tmp_path, "--rollback_threshold", "inf"))


def test_missing_test_file(capsys, tmp_path):
    err = run_error(
        capsys,
        "run_bild_translation",
        ["--test_file", str(tmp_path / "nope.jsonl"), "--large", "org/l", "--small", "org/s"],
    )
    assert "--test_file" in err and "nope.jsonl" in err


def test_missing_config_file(capsys, data, tmp_path):
    err = run_error(capsys, "run_bild_translation", base(data, tmp_path, "--config", str(tmp_path / "none.yaml")))
    assert "--config" in err


def test_unknown_config_key_names_key_and_allowed_keys(capsys, data, tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("name: demo\nfallback_treshold: 0.5\n")
    err = run_error(capsys, "run_bild_translation", base(data, tmp_path, "--config", str(config)))
    assert "'fallback_treshold'" in err and "Allowed keys" in err and "fallback_threshold" in err


def test_bad_value_in_config_file(capsys, data, tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("rollback_threshold: -2\n")
    assert "--rollback_threshold" in run_error(
        capsys, "run_bild_translation", base(data, tmp_path, "--config", str(config))
    )
    config.write_text("paper_settings:\n  aligned: {fallback_threshold: 0.5, rollback: 2}\n")
    assert "'rollback'" in run_error(capsys, "run_bild_translation", base(data, tmp_path, "--config", str(config)))


def test_config_for_the_other_task(capsys, data, tmp_path):
    err = run_error(
        capsys, "run_bild_translation", base(data, tmp_path, "--config", str(ROOT / "configs" / "xsum.yaml"))
    )
    assert "--config" in err and "summarization" in err


def test_unknown_flag_is_rejected(capsys, data, tmp_path):
    with pytest.raises(SystemExit):
        load_script("run_bild_translation").main(base(data, tmp_path, "--fallback", "0.5"))
    assert "--fallback" in capsys.readouterr().err


def test_jsonl_without_requested_fields(capsys, tmp_path):
    path = tmp_path / "wrong.jsonl"
    path.write_text('{"document": "a b", "summary": "a"}\n')
    err = run_error(
        capsys,
        "run_bild_summarization",
        ["--test_file", str(path), "--large", "org/l", "--small", "org/s", "--output_dir", str(tmp_path / "o")],
    )
    assert "--source_field" in err and "document" in err
    # naming the fields makes the same file usable
    with pytest.raises(AssertionError, match="load was attempted"):
        load_script("run_bild_summarization").main(
            [
                "--test_file",
                str(path),
                "--large",
                "org/l",
                "--small",
                "org/s",
                "--output_dir",
                str(tmp_path / "o2"),
                "--source_field",
                "document",
                "--target_field",
                "summary",
            ]
        )


def test_jsonl_with_bad_line(capsys, tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"source": "a", "target": "b"}\n{"source": \n')
    err = run_error(capsys, "run_bild_translation", ["--test_file", str(path), "--large", "org/l", "--small", "org/s"])
    assert "--test_file" in err and "line 2" in err


def test_hub_dataset_without_requested_fields(capsys, tmp_path, monkeypatch):
    import datasets

    rows = [{"translation": {"de": "das haus", "fr": "la maison"}}]
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: datasets.Dataset.from_list(rows))
    err = run_error(
        capsys,
        "run_bild_translation",
        ["--config", str(ROOT / "configs" / "iwslt2017_de_en.yaml"), "--output_dir", str(tmp_path / "o")],
    )
    assert "--target_lang" in err and "'en'" in err and "fr" in err

    rows = [{"article": "text", "highlights": "sum"}]
    err = run_error(
        capsys,
        "run_bild_summarization",
        ["--config", str(ROOT / "configs" / "xsum.yaml"), "--output_dir", str(tmp_path / "o")],
    )
    assert "--source_field" in err and "'document'" in err and "article" in err


def test_hub_dataset_that_cannot_load(capsys, tmp_path, monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("no internet")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    err = run_error(
        capsys,
        "run_bild_translation",
        ["--config", str(ROOT / "configs" / "wmt14_de_en.yaml"), "--output_dir", str(tmp_path / "o")],
    )
    assert "--dataset_name" in err and "wmt14" in err and "--test_file" in err


def test_hub_dataset_is_read_with_config_fields(tmp_path, monkeypatch):
    """The Hub path (translation dict / document+summary fields, --limit as a split slice) without the Hub."""
    import datasets

    from bild.evaluation.config import resolve_config
    from bild.evaluation.data import load_examples

    calls = []

    def fake_load(name, subset=None, split=None):
        calls.append((name, subset, split))
        return datasets.Dataset.from_list(
            [{"translation": {"de": f"satz {i}", "en": f"sentence {i}"}} for i in range(3)]
        )

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    cfg, _ = resolve_config(["--config", str(ROOT / "configs" / "iwslt2017_de_en.yaml"), "--limit", "3"], "translation")
    examples = load_examples(cfg)
    assert calls == [("iwslt2017", "iwslt2017-de-en", "test[:3]")]
    assert [(e.id, e.source, e.target) for e in examples][1] == (1, "satz 1", "sentence 1")


def test_missing_models_for_mode(capsys, data, tmp_path):
    err = run_error(capsys, "run_bild_translation", ["--test_file", str(data), "--mode", "bild", "--small", "org/s"])
    assert "--large" in err
    err = run_error(capsys, "run_bild_translation", ["--test_file", str(data), "--mode", "small", "--large", "org/l"])
    assert "--small" in err
    err = run_error(
        capsys,
        "run_bild_translation",
        ["--test_file", str(data), "--mode", "bild", "--large", "org/l", "--small", str(tmp_path / "missing-dir")],
    )
    assert "--small" in err and "missing-dir" in err


def test_no_data_source(capsys, tmp_path):
    err = run_error(capsys, "run_bild_translation", ["--large", "org/l", "--small", "org/s"])
    assert "--test_file" in err and "--dataset_name" in err


def test_existing_run_needs_resume(capsys, data, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "predictions.jsonl").write_text('{"id": 0}\n')
    err = run_error(capsys, "run_bild_translation", base(data, tmp_path))
    assert "--resume" in err and "--overwrite" in err


def test_resume_with_changed_setting(capsys, data, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    saved = {"mode": "bild", "fallback_threshold": 0.5}
    (out / "config.json").write_text(json.dumps(saved))
    err = run_error(capsys, "run_bild_translation", base(data, tmp_path, "--resume", "--fallback_threshold", "0.7"))
    assert "--resume" in err and "fallback_threshold: 0.5 -> 0.7" in err


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--fallback", "0.5,1.2", "--rollback", "2"], "--fallback"),
        (["--fallback", "0.5", "--rollback", "2,-1"], "--rollback"),
        (["--fallback", "half", "--rollback", "2"], "--fallback"),
        (["--fallback", "0.5", "--rollback", "2", "--mode", "large"], "--mode"),
        (["--fallback", "auto,inf", "--rollback", "2"], "--fallback"),
        (["--fallback", "auto", "--rollback", "2", "--quality_budget", "-1"], "--quality_budget"),
    ],
)
def test_sweep_bad_thresholds(capsys, data, tmp_path, argv, expected):
    err = run_error(capsys, "sweep_thresholds", base(data, tmp_path, *argv))
    assert expected in err


@pytest.mark.parametrize("script_task, config", [("summarization", "xsum"), ("translation", "iwslt2017_de_en")])
def test_local_large_folder_means_its_tokenizer(tmp_path, monkeypatch, script_task, config):
    """A config file's Hub tokenizer is not asked for when --large is a local folder (no Hub request, no retries
    offline), unless --tokenizer says otherwise; a Hub --large keeps the config file's tokenizer."""
    import transformers

    from bild.evaluation.config import resolve_config
    from bild.evaluation.modeling import load_tokenizer

    asked = []

    class FakeTokenizer:
        @staticmethod
        def from_pretrained(name, **kw):
            asked.append(name)
            return types.SimpleNamespace()

    monkeypatch.setattr(transformers, "AutoTokenizer", FakeTokenizer)
    large = tmp_path / "large"
    large.mkdir()
    cfg_file = str(ROOT / "configs" / f"{config}.yaml")
    hub_tokenizer = resolve_config(["--config", cfg_file], script_task)[0].tokenizer
    assert hub_tokenizer and not hub_tokenizer.startswith("/")  # the file names a Hub tokenizer
    for args, want in (
        (["--large", str(large), "--mode", "large"], str(large)),
        (["--large", str(large), "--mode", "large", "--tokenizer", "org/tok"], "org/tok"),
        (["--large", "org/large", "--mode", "large"], hub_tokenizer),
    ):
        asked.clear()
        cfg, _ = resolve_config(["--config", cfg_file, *args], script_task)
        assert load_tokenizer(cfg).bild_source == want and asked == [want], (args, asked)
