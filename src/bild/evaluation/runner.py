"""One evaluation run: run folder, resume, timed generation loop, predictions.jsonl and results.json.

Files in the run folder (``--output_dir``):

* ``config.json``       - the resolved configuration (defaults < YAML < paper setting < flags);
* ``predictions.jsonl`` - one line per finished example, appended and flushed as it goes
  (under several processes each writes ``predictions.rank<k>.jsonl``; they are merged at the end);
* ``results.json``      - quality, latency, throughput, engine rates, versions and device.

``--resume`` reads the finished examples back (a torn last line is dropped), refuses a
configuration that differs in a way that matters, and only generates the rest.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .config import ConfigError, EvalConfig, differing_keys, format_threshold, resolve_config
from .data import Example, load_examples
from .distributed import LocalState, get_state
from .metrics import quality, summarize_records
from .timing import timed

CONFIG_FILE = "config.json"
PREDICTIONS_FILE = "predictions.jsonl"
RESULTS_FILE = "results.json"


# --------------------------------------------------------------------------------------------
# run folder
# --------------------------------------------------------------------------------------------
def _prediction_files(run_dir: Path) -> list[Path]:
    return [run_dir / PREDICTIONS_FILE, *sorted(run_dir.glob("predictions.rank*.jsonl"))]


def read_predictions(run_dir: str | Path) -> dict[int, dict[str, Any]]:
    """Finished records by example id, from predictions.jsonl and any per-rank files.

    Lines that are not complete JSON objects (an interrupted write) are skipped.
    """
    records: dict[int, dict[str, Any]] = {}
    for path in _prediction_files(Path(run_dir)):
        if not path.is_file():
            continue
        with path.open(encoding="utf-8") as handle:
            for line in handle:
                if not line.endswith("\n"):
                    continue  # torn last line
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(record, dict) and "id" in record:
                    records.setdefault(int(record["id"]), record)
    return records


def write_predictions(run_dir: str | Path, records: Sequence[dict[str, Any]]) -> None:
    """Atomically replace predictions.jsonl with ``records`` (sorted by id) and drop per-rank files."""
    run_dir = Path(run_dir)
    tmp = run_dir / (PREDICTIONS_FILE + ".tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        for record in sorted(records, key=lambda r: r["id"]):
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    os.replace(tmp, run_dir / PREDICTIONS_FILE)
    for path in run_dir.glob("predictions.rank*.jsonl"):
        path.unlink()


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def prepare_run_dir(cfg: EvalConfig, state: Any = None) -> dict[int, dict[str, Any]]:
    """Check the run folder against ``--resume``/``--overwrite`` and return the finished records.

    Raises :class:`ConfigError` (before any model is loaded) when the folder holds a run and
    neither flag was given, or when ``--resume`` meets a configuration that differs.
    """
    state = state or LocalState()
    run_dir = Path(cfg.output_dir)
    has_run = (run_dir / CONFIG_FILE).is_file() or any(p.is_file() for p in _prediction_files(run_dir))
    done: dict[int, dict[str, Any]] = {}
    if has_run and not (cfg.resume or cfg.overwrite):
        raise ConfigError(
            f"--output_dir {run_dir} already holds a run; pass --resume to continue it, "
            "--overwrite to replace it, or choose another --output_dir"
        )
    if has_run and cfg.resume:
        saved_path = run_dir / CONFIG_FILE
        if saved_path.is_file():
            saved = json.loads(saved_path.read_text(encoding="utf-8"))
            diff = differing_keys(saved, cfg.to_dict())
            if diff:
                changes = "; ".join(f"{k}: {old!r} -> {new!r}" for k, old, new in diff)
                raise ConfigError(
                    f"--resume: {run_dir} was produced with a different configuration ({changes}). "
                    "Restore those settings, or use --overwrite or a new --output_dir"
                )
        done = read_predictions(run_dir)
    state.wait_for_everyone()  # every process has checked the folder before the main one changes it
    if state.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        if has_run and cfg.overwrite:
            for path in [*_prediction_files(run_dir), run_dir / RESULTS_FILE]:
                if path.is_file():
                    path.unlink()
        elif done:
            write_predictions(run_dir, list(done.values()))  # drops torn lines, merges rank files
        _write_json(run_dir / CONFIG_FILE, cfg.to_dict())
    state.wait_for_everyone()
    return done


# --------------------------------------------------------------------------------------------
# generation loop
# --------------------------------------------------------------------------------------------
def _batches(items: Sequence[Example], size: int) -> list[Sequence[Example]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def generate_batch(generator: Any, batch: Sequence[Example], sink) -> list[dict[str, Any]]:
    """Generate one batch, timing only the generate call; its records are written to ``sink`` and flushed."""
    enc = generator.encode([e.source for e in batch])
    sequences, seconds = timed(lambda: generator.generate(enc), generator.bundle.device)
    stats = generator.last_stats()
    predictions, counts = generator.decode(enc, sequences)
    records = [
        {
            "id": example.id,
            "source": example.source,
            "reference": example.target,
            "prediction": prediction,
            "generation_seconds": seconds / len(batch),
            "batch_seconds": seconds,
            "batch_first_id": batch[0].id,
            "batch_size": len(batch),
            "new_tokens": count,
            "stats": stats,
        }
        for example, prediction, count in zip(batch, predictions, counts)
    ]
    sink.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    sink.flush()
    return records


def warm_up(cfg: EvalConfig, generator: Any, batches: Sequence[Sequence[Example]]) -> None:
    """``cfg.warmup`` untimed generate calls on the first batches (cycled)."""
    for i in range(cfg.warmup if batches else 0):
        enc = generator.encode([e.source for e in batches[i % len(batches)]])
        timed(lambda: generator.generate(enc), generator.bundle.device)


def generate_records(
    cfg: EvalConfig, generator: Any, examples: Sequence[Example], sink, state: Any
) -> list[dict[str, Any]]:
    """Warm up (untimed), then generate every example, timing only the generate call.

    Each finished batch is written to ``sink`` (an open file) and flushed at once.
    """
    from tqdm.auto import tqdm

    batches = _batches(examples, cfg.batch_size)
    warm_up(cfg, generator, batches)

    records: list[dict[str, Any]] = []
    total_tokens, total_seconds = 0, 0.0
    bar = tqdm(
        total=len(examples),
        desc=f"{cfg.name or cfg.task} [{cfg.mode}]",
        unit="ex",
        disable=not state.is_main_process,
        dynamic_ncols=True,
    )
    try:
        for batch in batches:
            done = generate_batch(generator, batch, sink)
            records += done
            seconds = done[0]["batch_seconds"]
            total_tokens += sum(r["new_tokens"] for r in done)
            total_seconds += seconds
            bar.update(len(batch))
            bar.set_postfix(
                tok_s=f"{total_tokens / total_seconds:.1f}" if total_seconds else "-",
                lat=f"{total_seconds / len(records):.3f}s",
            )
    finally:
        bar.close()
    return records


def versions() -> dict[str, str | None]:
    """Exact versions of the software that produced the numbers."""
    import importlib.metadata as md
    import platform

    def version(dist: str) -> str | None:
        try:
            return md.version(dist)
        except md.PackageNotFoundError:
            return None

    return {
        "python": platform.python_version(),
        "torch": version("torch"),
        "transformers": version("transformers"),
        "bild": version("big-little-decoder"),
        "sacrebleu": version("sacrebleu"),
        "rouge_score": version("rouge-score"),
        "datasets": version("datasets"),
        "accelerate": version("accelerate"),
    }


def build_results(
    cfg: EvalConfig,
    records: Sequence[dict[str, Any]],
    device: str,
    num_processes: int,
    resumed: int,
    tokenizer: str | None = None,
    chat_template: bool | None = None,
) -> dict[str, Any]:
    """results.json: quality, timing summary, engine rates, settings, versions and device.

    ``chat_template``: whether the prompts went through the tokenizer's chat template (None when
    nothing was generated in this call, e.g. a finished run re-scored).
    """
    scores = quality(cfg.metric, [r["prediction"] for r in records], [r["reference"] for r in records])
    results: dict[str, Any] = {
        "task": cfg.task,
        "name": cfg.name,
        "mode": cfg.mode,
        "metric": cfg.metric,
        "score": scores["score"],
        "quality": scores,
    }
    results.update(summarize_records(records, cfg.mode))
    if cfg.mode in ("bild", "exact"):
        results["fallback_threshold"] = (
            format_threshold(cfg.fallback_threshold)
            if isinstance(cfg.fallback_threshold, str) or math.isinf(cfg.fallback_threshold)
            else cfg.fallback_threshold
        )
        results["rollback_threshold"] = "inf" if math.isinf(cfg.rollback_threshold) else cfg.rollback_threshold
        results["max_small_steps"] = cfg.max_small_steps
    results.update(
        large=cfg.large if cfg.needs_large else None,
        small=cfg.small if cfg.needs_small else None,
        tokenizer=tokenizer or cfg.tokenizer or cfg.large or cfg.small,
        prompt_template=cfg.prompt_template,
        source_prefix=cfg.source_prefix,
        chat_template=chat_template,
        batch_size=cfg.batch_size,
        warmup=cfg.warmup,
        resumed_examples=resumed,
        num_processes=num_processes,
        device=device,
        versions=versions(),
    )
    return results


def run(
    cfg: EvalConfig,
    examples: Sequence[Example],
    done: dict[int, dict[str, Any]],
    get_bundle: Callable[[], Any],
    state: Any = None,
) -> dict[str, Any] | None:
    """Generate the unfinished examples and write results.json; returns the results (main process).

    ``get_bundle`` is called only when something is left to generate, so a finished run is
    re-scored without loading any model. ``prepare_run_dir`` must have been called first.
    """
    from .modeling import BatchGenerator, device_name, resolve_device

    state = state or LocalState()
    run_dir = Path(cfg.output_dir)
    done, kept, pending = split_done(examples, done)  # kept: beyond a smaller --limit, not scored
    device = resolve_device(cfg, state)
    new_records: list[dict[str, Any]] = []
    tokenizer = chat_template = None
    if pending:
        import transformers

        transformers.set_seed(cfg.seed)
        bundle = get_bundle()
        device = bundle.device
        tokenizer = getattr(bundle.tokenizer, "bild_source", None)
        generator = BatchGenerator(cfg, bundle)
        chat_template = generator.chat_template
        name = PREDICTIONS_FILE if state.num_processes == 1 else f"predictions.rank{state.process_index}.jsonl"
        with state.split_between_processes(pending) as shard:
            with open(run_dir / name, "a", encoding="utf-8") as sink:
                new_records = generate_records(cfg, generator, shard, sink, state)
    gathered = state.gather_object(new_records)
    if not state.is_main_process:
        return None
    return finish_run(cfg, done, kept, gathered, device_name(device), state.num_processes, tokenizer, chat_template)


def split_done(examples: Sequence[Example], done: dict[int, dict[str, Any]]):
    """(records of ``examples`` already done, records beyond them (kept, not scored), examples left to do)."""
    wanted = {e.id for e in examples}
    return (
        {i: r for i, r in done.items() if i in wanted},
        {i: r for i, r in done.items() if i not in wanted},
        [e for e in examples if e.id not in done],
    )


def finish_run(
    cfg: EvalConfig,
    done: dict[int, dict[str, Any]],
    kept: dict[int, dict[str, Any]],
    new_records: Sequence[dict[str, Any]],
    device: str,
    num_processes: int,
    tokenizer=None,
    chat_template=None,
) -> dict[str, Any]:
    """Write the run's predictions (sorted by id) and results.json; returns the results."""
    run_dir = Path(cfg.output_dir)
    records = sorted([*done.values(), *new_records], key=lambda r: r["id"])
    write_predictions(run_dir, [*records, *kept.values()])
    results = build_results(
        cfg, records, device, num_processes, resumed=len(done), tokenizer=tokenizer, chat_template=chat_template
    )
    _write_json(run_dir / RESULTS_FILE, results)
    return results


def load_and_check(argv: list[str] | None, task: str, parser=None):
    """Everything that must succeed before a model is loaded: flags, config file, data, run folder.

    Returns ``(config, process state, examples, finished records)``.
    """
    cfg, _ = resolve_config(argv, task, parser)
    state = get_state(cfg.device)
    examples = load_examples(cfg)
    done = prepare_run_dir(cfg, state)
    return cfg, state, examples, done


def format_summary(results: dict[str, Any], run_dir: str) -> str:
    """One-line human summary of a run."""
    lat = results["latency"]
    parts = [
        f"{results['mode']}: {results['metric']}={results['score']:.2f}",
        f"latency mean={lat['mean']:.4f}s p50={lat['p50']:.4f}s p90={lat['p90']:.4f}s",
        f"tokens/s={results['tokens_per_second']:.1f}",
    ]
    for key in ("fallback_rate", "rollback_rate", "large_calls_per_token"):
        if results.get(key) is not None:
            parts.append(f"{key}={results[key]:.3f}")
    return " | ".join(parts) + f"  -> {run_dir}"


def main(argv: list[str] | None = None, task: str = "translation") -> dict[str, Any] | None:
    """Command-line entry point shared by run_bild_translation.py and run_bild_summarization.py."""
    from .modeling import load_models, resolve_device

    try:
        cfg, state, examples, done = load_and_check(argv, task)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    try:
        results = run(cfg, examples, done, lambda: load_models(cfg, resolve_device(cfg, state)), state)
    except KeyboardInterrupt:
        finished = len(read_predictions(cfg.output_dir))
        print(
            f"\ninterrupted: {finished} examples are saved in {cfg.output_dir}; "
            "rerun the same command with --resume to finish",
            file=sys.stderr,
        )
        raise
    if results is not None:
        print(format_summary(results, cfg.output_dir))
    return results
