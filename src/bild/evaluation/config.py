"""Run configuration: one dataclass, filled from defaults < YAML file < paper setting < flags.

Every field of :class:`EvalConfig` is both a key of the YAML task files in ``configs/`` and a
command-line flag of the same name (``--fallback_threshold 0.6``), except ``paper_settings``
(file only) and ``task`` (fixed by the script); ``chat_template`` is set with ``--chat_template`` /
``--no_chat_template``. An unknown key in a file is an error that names
the key and lists the allowed ones. :func:`validate` checks everything that can be checked
without touching a model, so that bad input fails fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MODES = ("large", "small", "bild", "exact", "assisted")
TASKS = ("translation", "summarization")
METRICS = ("bleu", "rouge")
DTYPES = ("auto", "float32", "float16", "bfloat16")
PAPER_SETTING_NAMES = ("unaligned", "aligned")
PAPER_SETTING_KEYS = ("small", "large", "fallback_threshold", "rollback_threshold", "note")

#: Keys that may change between an interrupted run and its ``--resume`` without invalidating it.
RESUME_IGNORED_KEYS = frozenset(
    {"resume", "overwrite", "output_dir", "limit", "warmup", "paper_settings", "paper_setting"}
)


class ConfigError(ValueError):
    """Bad user input (flag, config file, data file). Raised before any model is loaded."""


@dataclass
class EvalConfig:
    """Everything one evaluation run needs. Field names double as YAML keys and ``--flags``."""

    # --- what to run -------------------------------------------------------------------------
    task: str = field(default="translation", metadata={"help": "translation or summarization (set by the script)"})
    name: str | None = field(default=None, metadata={"help": "short task name, used in the default --output_dir"})
    mode: str = field(default="bild", metadata={"help": "one of " + ", ".join(MODES)})
    large: str | None = field(default=None, metadata={"help": "large model: local path or Hub id"})
    small: str | None = field(default=None, metadata={"help": "small model: local path or Hub id"})
    tokenizer: str | None = field(
        default=None, metadata={"help": "tokenizer path or Hub id (default: the large model's, else the small model's)"}
    )
    fallback_threshold: float | str = field(
        default="auto", metadata={"help": "BiLD fallback threshold: 'auto' (adaptive policy) or a number in [0, 1]"}
    )
    rollback_threshold: float = field(default=5.0, metadata={"help": "BiLD rollback threshold, >= 0 or 'inf'"})
    max_small_steps: int | str = field(
        default="auto", metadata={"help": "max tokens the small model drafts per round: 'auto' or an integer >= 1"}
    )
    prompt_lookup: int = field(
        default=0,
        metadata={
            "help": "bild / exact modes: also draft by prompt lookup, up to this many tokens copied from the prompt per round (transformers' prompt_lookup_num_tokens; 10 is its default); 0 (default) drafts with the small model only"
        },
    )
    paper_setting: str | None = field(
        default=None, metadata={"help": "apply the config file's paper_settings entry: unaligned or aligned"}
    )
    paper_settings: dict = field(
        default_factory=dict, metadata={"help": "file only: the paper's checkpoints and thresholds"}
    )
    # --- data ----------------------------------------------------------------------------------
    dataset_name: str | None = field(default=None, metadata={"help": "Hub dataset name for datasets.load_dataset"})
    dataset_config: str | None = field(default=None, metadata={"help": "Hub dataset configuration name"})
    split: str = field(default="test", metadata={"help": "dataset split"})
    test_file: str | None = field(
        default=None, metadata={"help": "local JSONL with 'source' and 'target' fields (overrides --dataset_name)"}
    )
    limit: int | None = field(default=None, metadata={"help": "evaluate only the first N examples"})
    translation_field: str = field(
        default="translation", metadata={"help": "field holding the {lang: text} dict of translation datasets"}
    )
    source_lang: str | None = field(default=None, metadata={"help": "source language code, e.g. de"})
    target_lang: str | None = field(default=None, metadata={"help": "target language code, e.g. en"})
    source_field: str = field(
        default="source", metadata={"help": "source text field (summarization datasets: document / article)"}
    )
    target_field: str = field(
        default="target", metadata={"help": "reference field (summarization datasets: summary / highlights)"}
    )
    source_prefix: str = field(
        default="", metadata={"help": "text prepended to every source, e.g. 'summarize: ' for T5"}
    )
    prompt_template: str = field(
        default="{source}",
        metadata={
            "help": "the task prompt; {source} stands for source_prefix + the example's text, e.g. 'Translate to English: {source}' for an instruct model"
        },
    )
    chat_template: bool = field(
        default=True,
        metadata={
            "help": "on by default: decoder-only models whose tokenizer has a chat template get the task prompt through it (as a user turn, with the generation prompt); --no_chat_template sends the plain prompt"
        },
    )
    max_source_length: int = field(default=1024, metadata={"help": "truncate sources to this many tokens"})
    max_target_length: int = field(default=128, metadata={"help": "max new tokens generated per example"})
    metric: str | None = field(
        default=None, metadata={"help": "bleu or rouge (default: bleu for translation, rouge for summarization)"}
    )
    # --- how to run ----------------------------------------------------------------------------
    batch_size: int = field(default=1, metadata={"help": "examples per generate call (the paper uses 1)"})
    seed: int = field(default=42, metadata={"help": "random seed"})
    device: str = field(default="auto", metadata={"help": "auto (cuda if available), cpu, cuda, cuda:N"})
    dtype: str = field(default="float32", metadata={"help": "model dtype: " + ", ".join(DTYPES)})
    warmup: int = field(default=2, metadata={"help": "untimed warm-up generations before the timed loop"})
    output_dir: str | None = field(default=None, metadata={"help": "run folder (default: runs/<name>/<mode>...)"})
    resume: bool = field(default=False, metadata={"help": "continue an interrupted run in --output_dir"})
    overwrite: bool = field(default=False, metadata={"help": "discard an existing run in --output_dir"})

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly copy (infinity is written as the string 'inf')."""
        out = dataclasses.asdict(self)
        for key, value in out.items():
            if isinstance(value, float) and math.isinf(value):
                out[key] = "inf"
        return out

    @property
    def needs_large(self) -> bool:
        return self.mode != "small"

    @property
    def needs_small(self) -> bool:
        return self.mode != "large"

    def run_name(self) -> str:
        """``<mode>``, plus the thresholds (and prompt lookup) for the modes that use them: bild_fb0.5_rb3."""
        leaf = self.mode
        if self.mode in ("bild", "exact"):
            leaf += f"_fb{format_threshold(self.fallback_threshold)}_rb{format_threshold(self.rollback_threshold)}"
            leaf += f"_lookup{self.prompt_lookup}" if self.prompt_lookup else ""
        return leaf

    def default_output_dir(self) -> str:
        """``runs/<name>/<run_name>``."""
        return str(Path("runs") / (self.name or self.task) / self.run_name())


CONFIG_KEYS = tuple(f.name for f in dataclasses.fields(EvalConfig))
_FILE_ONLY = {"paper_settings", "task"}
_BOOL_KEYS = {"resume", "overwrite", "chat_template"}
_NEGATABLE_KEYS = {"chat_template"}  # --<key> and --no_<key>
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(EvalConfig) if f.default is not dataclasses.MISSING}
_INT_KEYS = {
    "prompt_lookup",
    "max_small_steps",
    "limit",
    "max_source_length",
    "max_target_length",
    "batch_size",
    "seed",
    "warmup",
}
_FLOAT_KEYS = {"fallback_threshold", "rollback_threshold"}


def format_threshold(value: float | str) -> str:
    """Compact text for a threshold: 0.6 -> '0.6', 3.0 -> '3', inf -> 'inf', 'auto' -> 'auto'."""
    if value == "auto":
        return "auto"
    if math.isinf(value):
        return "inf"
    return f"{value:g}"


def parse_threshold(text: Any) -> float | str:
    """Parse a threshold that may be written 'inf' / 'infinity', or 'auto' (the adaptive policy)."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return float(text)
    value = str(text).strip().lower()
    if value == "auto":
        return "auto"
    if value in ("inf", "infinity", "+inf"):
        return math.inf
    return float(value)


def _coerce(key: str, value: Any) -> Any:
    """Convert a YAML or command-line value to the field's type, naming the key on failure."""
    if value is None:
        return None
    try:
        if key in _FLOAT_KEYS:
            return parse_threshold(value)
        if key == "max_small_steps" and str(value).strip().lower() == "auto":
            return "auto"
        if key in _INT_KEYS:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)
            return int(value)
        if key in _BOOL_KEYS:
            if isinstance(value, bool):
                return value
            raise ValueError(value)
        if key == "paper_settings":
            if not isinstance(value, dict):
                raise ValueError(value)
            return value
        return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"--{key}: invalid value {value!r}") from None


def _reject_unknown_keys(data: dict, allowed, where: str) -> None:
    """ConfigError naming every key of `data` not in `allowed`, and listing the allowed ones."""
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(map(repr, unknown))}. Allowed keys: {', '.join(allowed)}"
        )


def load_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML task file; unknown keys are an error naming the key and the allowed keys."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--config: file not found: {path}")
    with path.open(encoding="utf-8") as handle:
        try:
            data = yaml.safe_load(handle) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"--config: {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config: {path} must hold a mapping of keys to values")
    _reject_unknown_keys(data, CONFIG_KEYS, f"--config: {path}")
    return {key: _coerce(key, value) for key, value in data.items()}


def build_parser(task: str, description: str | None = None, exclude: tuple[str, ...] = ()) -> argparse.ArgumentParser:
    """Command-line parser with one flag per config field (minus ``exclude``); unset flags stay absent."""
    parser = argparse.ArgumentParser(
        description=description or f"Evaluate BiLD on a {task} task.",
        argument_default=argparse.SUPPRESS,
        allow_abbrev=False,  # "--fallback" must not silently mean "--fallback_threshold"
    )
    parser.add_argument("--config", help="YAML task file (configs/*.yaml); flags override it")
    for f in dataclasses.fields(EvalConfig):
        if f.name in _FILE_ONLY or f.name in exclude:
            continue
        help_text = f.metadata.get("help")
        if f.name in _NEGATABLE_KEYS:
            parser.add_argument(f"--{f.name}", action="store_true", help=help_text)
            parser.add_argument(f"--no_{f.name}", dest=f.name, action="store_false", help=f"turn --{f.name} off")
        elif f.name in _BOOL_KEYS:
            parser.add_argument(f"--{f.name}", action="store_true", help=help_text)
        else:
            parser.add_argument(f"--{f.name}", type=str, help=help_text, metavar=f.name.upper())
    return parser


def apply_paper_setting(values: dict[str, Any], cli: dict[str, Any]) -> None:
    """Copy small/large/thresholds of ``paper_settings[paper_setting]`` into ``values`` unless given as flags."""
    name = values.get("paper_setting")
    if not name:
        return
    settings = values.get("paper_settings") or {}
    if name not in settings or not isinstance(settings[name], dict):
        available = [k for k in settings if k in PAPER_SETTING_NAMES]
        raise ConfigError(
            f"--paper_setting {name!r} is not in the config file's paper_settings "
            f"(available: {', '.join(available) or 'none'})"
        )
    for key, value in settings[name].items():
        if key != "note" and key not in cli:
            values[key] = _coerce(key, value)


def config_from_namespace(namespace: argparse.Namespace, task: str) -> EvalConfig:
    """Merge defaults < YAML file < paper setting < explicit flags into an :class:`EvalConfig`."""
    given = vars(namespace)
    values: dict[str, Any] = {}
    if given.get("config"):
        values.update(load_config_file(given["config"]))
    file_task = values.pop("task", None)
    if file_task is not None and file_task != task:
        raise ConfigError(
            f"--config: {given['config']} is a {file_task} config, but this script runs {task}; "
            f"use the {file_task} script"
        )
    cli = {key: _coerce(key, value) for key, value in given.items() if key in CONFIG_KEYS}
    if "paper_setting" in cli:
        values["paper_setting"] = cli["paper_setting"]
    apply_paper_setting(values, cli)
    values.update(cli)
    values["task"] = task
    cfg = EvalConfig(**values)
    if "tokenizer" not in cli and _local_model_on_command_line(cfg, cli):
        cfg.tokenizer = None  # a local --large (--small) folder means its own tokenizer: no Hub request
    if cfg.metric is None:
        cfg.metric = "bleu" if task == "translation" else "rouge"
    if cfg.output_dir is None:
        cfg.output_dir = cfg.default_output_dir()
    return cfg


def _local_model_on_command_line(cfg: EvalConfig, cli: dict[str, Any]) -> bool:
    """Whether the model whose tokenizer comes first (the large one, else the small one) was given on the
    command line as an existing folder: it then means its own tokenizer over a config file's ``tokenizer``."""
    key = "large" if cfg.needs_large else "small" if cfg.needs_small else None
    return key in cli and bool(cli[key]) and os.path.isdir(os.path.expanduser(cli[key]))


def _is_local_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or os.path.exists(name) or name.count("/") > 1 or "\\" in name


def validate(cfg: EvalConfig) -> None:
    """Check every setting that can be checked without loading a model; raise :class:`ConfigError`."""
    if cfg.task not in TASKS:
        raise ConfigError(f"--task must be one of {', '.join(TASKS)}, got {cfg.task!r}")
    if cfg.mode not in MODES:
        raise ConfigError(f"--mode must be one of {', '.join(MODES)}, got {cfg.mode!r}")
    if cfg.metric not in METRICS:
        raise ConfigError(f"--metric must be one of {', '.join(METRICS)}, got {cfg.metric!r}")
    if cfg.dtype not in DTYPES:
        raise ConfigError(f"--dtype must be one of {', '.join(DTYPES)}, got {cfg.dtype!r}")
    validate_thresholds(cfg.fallback_threshold, cfg.rollback_threshold)
    if cfg.max_small_steps != "auto" and cfg.max_small_steps < 1:
        raise ConfigError(f"--max_small_steps must be 'auto' or >= 1, got {cfg.max_small_steps}")
    if cfg.prompt_lookup < 0:
        raise ConfigError(f"--prompt_lookup must be >= 0 (0 = off), got {cfg.prompt_lookup}")
    if cfg.prompt_lookup and cfg.mode not in ("bild", "exact"):
        raise ConfigError(f"--prompt_lookup needs --mode bild or exact (the engine's drafter), got --mode {cfg.mode}")
    for key in ("batch_size", "max_source_length", "max_target_length"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"--{key} must be >= 1, got {getattr(cfg, key)}")
    if "{source}" not in cfg.prompt_template:
        raise ConfigError(
            f"--prompt_template must contain {{source}} (where the source text goes), got {cfg.prompt_template!r}"
        )
    if cfg.warmup < 0:
        raise ConfigError(f"--warmup must be >= 0, got {cfg.warmup}")
    if cfg.limit is not None and cfg.limit < 1:
        raise ConfigError(f"--limit must be >= 1, got {cfg.limit}")
    if cfg.mode == "assisted" and cfg.batch_size != 1:
        raise ConfigError(
            "--batch_size must be 1 with --mode assisted (transformers' assisted generation is batch-1 only)"
        )
    if not (cfg.device == "auto" or cfg.device == "cpu" or cfg.device == "mps" or cfg.device.startswith("cuda")):
        raise ConfigError(f"--device must be auto, cpu, mps, cuda or cuda:N, got {cfg.device!r}")
    if cfg.resume and cfg.overwrite:
        raise ConfigError("--resume and --overwrite cannot be used together")
    validate_paper_settings(cfg.paper_settings)
    for role, needed in (("large", cfg.needs_large), ("small", cfg.needs_small)):
        name = getattr(cfg, role)
        if needed and not name:
            raise ConfigError(f"--{role} is required with --mode {cfg.mode} (a local path or a Hub id)")
        if needed and _is_local_path(name) and not os.path.isdir(os.path.expanduser(name)):
            raise ConfigError(f"--{role}: model directory not found: {name}")
    if cfg.tokenizer and _is_local_path(cfg.tokenizer) and not os.path.exists(os.path.expanduser(cfg.tokenizer)):
        raise ConfigError(f"--tokenizer: not found: {cfg.tokenizer}")
    if cfg.test_file:
        if not os.path.isfile(cfg.test_file):
            raise ConfigError(f"--test_file: file not found: {cfg.test_file}")
    elif not cfg.dataset_name:
        raise ConfigError(
            "no data: pass --test_file (local JSONL) or --dataset_name (Hub dataset), or a --config that names one"
        )
    elif cfg.task == "translation" and not (cfg.source_lang and cfg.target_lang):
        missing = "--source_lang" if not cfg.source_lang else "--target_lang"
        raise ConfigError(f"{missing} is required to read the '{cfg.translation_field}' field of {cfg.dataset_name}")


def validate_thresholds(fallback: float | str, rollback: float) -> None:
    """Fallback must be 'auto' or lie in [0, 1]; rollback must be >= 0 (infinity allowed, NaN not)."""
    if fallback != "auto" and (math.isnan(fallback) or not 0.0 <= fallback <= 1.0):
        raise ConfigError(f"--fallback_threshold must be 'auto' or in [0, 1], got {fallback}")
    if rollback == "auto" or math.isnan(rollback) or rollback < 0:
        raise ConfigError(f"--rollback_threshold must be >= 0 or 'inf', got {rollback}")


def validate_paper_settings(settings: dict) -> None:
    """``paper_settings`` holds ``note`` and the entries ``unaligned`` / ``aligned`` with known keys."""
    if not settings:
        return
    for name, entry in settings.items():
        if name == "note":
            continue
        if name not in PAPER_SETTING_NAMES:
            raise ConfigError(
                f"paper_settings: unknown entry {name!r}. Allowed: note, {', '.join(PAPER_SETTING_NAMES)}"
            )
        if not isinstance(entry, dict):
            raise ConfigError(f"paper_settings.{name} must be a mapping")
        _reject_unknown_keys(entry, PAPER_SETTING_KEYS, f"paper_settings.{name}")
        validate_thresholds(
            parse_threshold(entry.get("fallback_threshold", 0.5)),
            parse_threshold(entry.get("rollback_threshold", 0.0)),
        )


def resolve_config(argv: list[str] | None, task: str, parser: argparse.ArgumentParser | None = None):
    """Parse ``argv`` and return ``(config, namespace)``; the namespace keeps any extra flags."""
    parser = parser or build_parser(task)
    namespace = parser.parse_args(argv)
    cfg = config_from_namespace(namespace, task)
    validate(cfg)
    return cfg, namespace


def differing_keys(saved: dict[str, Any], current: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """Keys whose values differ between a saved run config and the current one (ignoring resume-safe keys).

    A key absent from one side counts as its default, so a run saved before a key existed resumes
    when the key is left at its default.
    """
    keys = (set(saved) | set(current)) - RESUME_IGNORED_KEYS
    old = {k: saved.get(k, _DEFAULTS.get(k)) for k in keys}
    new = {k: current.get(k, _DEFAULTS.get(k)) for k in keys}
    return [(k, old[k], new[k]) for k in sorted(keys) if old[k] != new[k]]
