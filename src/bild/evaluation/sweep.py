"""Threshold sweeps: the large-model baseline and every (fallback, rollback) pair, in one process.

All runs share the same examples and the same loaded models. In one process the points are
interleaved: every point generates example k (after an untimed warm-up of each) before any generates
example k + 1, in an order rotated from example to example, so a slow spell of the machine hits every
point alike; with several processes they run one after the other. Each point keeps its own run folder
under the sweep folder (``large/``, ``bild_fb0.5_rb3/`` ...), so an interrupted sweep continues with
``--resume``. At the end ``sweep.csv`` and ``sweep.png`` (speedup = the median of per-example
latency ratios against quality, Pareto front marked, baseline quality as a reference line) are
written next to them; the CSV also keeps the ratio of mean latencies (``speedup``).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .config import (
    TASKS,
    ConfigError,
    EvalConfig,
    build_parser,
    config_from_namespace,
    format_threshold,
    load_config_file,
    parse_threshold,
    validate,
)
from .data import load_examples
from .distributed import get_state
from .runner import PREDICTIONS_FILE, _batches, finish_run, generate_batch, prepare_run_dir, run, split_done, warm_up

CSV_COLUMNS = (
    "label",
    "mode",
    "fallback_threshold",
    "rollback_threshold",
    "metric",
    "score",
    "speedup",
    "speedup_median",
    "latency_mean",
    "latency_p50",
    "latency_p90",
    "tokens_per_second",
    "fallback_rate",
    "rollback_rate",
    "large_calls_per_token",
    "num_examples",
    "pareto",
    "run_dir",
)


def parse_values(text: str, flag: str, parse: Callable[[str], float]) -> list[float]:
    """Parse a comma-separated list such as ``0.3,0.5`` or ``1,2,inf``; errors name ``flag``."""
    values = []
    for item in str(text).split(","):
        if not item.strip():
            continue
        try:
            values.append(parse(item))
        except ValueError:
            raise ConfigError(f"{flag}: {item.strip()!r} is not a number") from None
    if not values:
        raise ConfigError(f"{flag} needs at least one value, e.g. {flag} 0.5,0.7")
    return values


def pareto_mask(speedups: Sequence[float], scores: Sequence[float]) -> list[bool]:
    """True for points no other point beats: at least as fast and as good, and strictly better in one."""
    mask = []
    for i, (x, y) in enumerate(zip(speedups, scores)):
        dominated = any(
            (xj >= x and yj >= y) and (xj > x or yj > y) for j, (xj, yj) in enumerate(zip(speedups, scores)) if j != i
        )
        mask.append(not dominated)
    return mask


def median_speedup(baseline_dir: str | Path, run_dir: str | Path) -> float:
    """Median over the examples both runs finished of (baseline seconds / run seconds), per example."""
    from statistics import median

    from .runner import read_predictions

    base, other = read_predictions(baseline_dir), read_predictions(run_dir)
    ratios = [
        base[i]["generation_seconds"] / other[i]["generation_seconds"]
        for i in base
        if i in other and other[i]["generation_seconds"] > 0
    ]
    return median(ratios) if ratios else math.nan


def run_interleaved(configs: Sequence[EvalConfig], examples, dones, get_bundle, state) -> list[dict[str, Any]]:
    """Every point of the sweep on one batch of examples before the next, in an order rotated from batch to
    batch, so that a slow spell of the machine hits every point alike (one process, one model bundle)."""
    from .modeling import BatchGenerator, device_name

    parts = [split_done(examples, done) for done in dones]
    new: list[list[dict[str, Any]]] = [[] for _ in configs]
    device, chat_template = None, None
    if any(pending for _, _, pending in parts):
        import transformers

        transformers.set_seed(configs[0].seed)
        bundle = get_bundle()
        device = bundle.device
        gens = [BatchGenerator(cfg, bundle) for cfg in configs]
        chat_template = gens[0].chat_template
        batches = _batches(examples, configs[0].batch_size)
        for gen, cfg in zip(gens, configs):  # untimed warm-up of each point
            warm_up(cfg, gen, batches)
        sinks = [open(Path(cfg.output_dir) / PREDICTIONS_FILE, "a", encoding="utf-8") for cfg in configs]
        try:
            for j, batch in enumerate(batches):
                for k in [(j + m) % len(configs) for m in range(len(configs))]:
                    todo = [e for e in batch if e.id not in parts[k][0]]
                    if todo:
                        new[k] += generate_batch(gens[k], todo, sinks[k])
                if state.is_main_process:
                    print(f"sweep: batch {j + 1}/{len(batches)} done for {len(configs)} points", flush=True)
        finally:
            for f in sinks:
                f.close()
    name = device_name(device) if device is not None else "unknown (nothing generated)"
    return [
        finish_run(cfg, done, kept, recs, name, 1, chat_template=chat_template)
        for cfg, (done, kept, _), recs in zip(configs, parts, new)
    ]


def make_row(label: str, results: dict[str, Any], run_dir: str, baseline_latency: float) -> dict[str, Any]:
    """One CSV row from a run's results.json content."""
    latency = results["latency"]["mean"]
    return {
        "label": label,
        "mode": results["mode"],
        "fallback_threshold": results.get("fallback_threshold", ""),
        "rollback_threshold": results.get("rollback_threshold", ""),
        "metric": "bleu" if results["metric"] == "bleu" else "rougeL",
        "score": results["score"],
        "speedup": baseline_latency / latency if latency > 0 else math.nan,
        "latency_mean": latency,
        "latency_p50": results["latency"]["p50"],
        "latency_p90": results["latency"]["p90"],
        "tokens_per_second": results["tokens_per_second"],
        "fallback_rate": results.get("fallback_rate"),
        "rollback_rate": results.get("rollback_rate"),
        "large_calls_per_token": results.get("large_calls_per_token"),
        "num_examples": results["num_examples"],
        "pareto": False,
        "run_dir": run_dir,
    }


def write_csv(rows: Sequence[dict[str, Any]], path: str | Path) -> None:
    """Write the sweep table (columns: :data:`CSV_COLUMNS`)."""
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in CSV_COLUMNS})


def pick_within_budget(rows: Sequence[dict[str, Any]], budget: float) -> dict[str, Any] | None:
    """The paper's pick: the fastest point (median per-example speedup) whose score is at most `budget` below
    the baseline's (rows[0]); None when no point is within it."""
    ok = [r for r in rows[1:] if r["score"] >= rows[0]["score"] - budget and not math.isnan(r["speedup_median"])]
    return max(ok, key=lambda r: r["speedup_median"]) if ok else None


def plot_sweep(
    rows: Sequence[dict[str, Any]],
    path: str | Path,
    title: str = "",
    budget: float | None = None,
    pick: dict[str, Any] | None = None,
) -> None:
    """Speedup (x) against quality (y); Pareto front joined and ringed, baseline as dashed lines, the quality
    budget's floor dotted and the point picked within it starred."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    baseline = rows[0]
    fig, ax = plt.subplots(figsize=(7, 5))
    ax.axhline(baseline["score"], color="gray", linestyle="--", linewidth=1, label="baseline: large model")
    ax.axvline(1.0, color="gray", linestyle=":", linewidth=1)
    if budget is not None:
        ax.axhline(
            baseline["score"] - budget,
            color="tab:orange",
            linestyle=":",
            linewidth=1,
            label=f"baseline - {budget:g} (quality budget)",
        )
    if pick is not None:
        ax.scatter(
            [pick["speedup_median"]],
            [pick["score"]],
            marker="*",
            s=260,
            color="tab:orange",
            zorder=5,
            label="fastest within budget",
        )
    points = rows[1:]
    ax.scatter(
        [r["speedup_median"] for r in points],
        [r["score"] for r in points],
        color="tab:blue",
        zorder=3,
        label="threshold pairs",
    )
    ax.scatter([baseline["speedup_median"]], [baseline["score"]], color="black", marker="s", zorder=3)
    for r in points:
        label = "/".join(format_threshold(parse_threshold(r[k])) for k in ("fallback_threshold", "rollback_threshold"))
        ax.annotate(label, (r["speedup_median"], r["score"]), textcoords="offset points", xytext=(4, 4), fontsize=7)
    front = sorted((r for r in rows if r["pareto"]), key=lambda r: r["speedup_median"])
    if front:
        ax.plot(
            [r["speedup_median"] for r in front],
            [r["score"] for r in front],
            color="tab:red",
            linewidth=1.5,
            zorder=2,
            label="Pareto front",
        )
        ax.scatter(
            [r["speedup_median"] for r in front],
            [r["score"] for r in front],
            s=120,
            facecolors="none",
            edgecolors="tab:red",
            zorder=4,
        )
    ax.set_xlabel("speedup over the large model (median of per-example ratios, interleaved)")
    ax.set_ylabel(baseline["metric"].upper() if baseline["metric"] == "bleu" else "ROUGE-L")
    ax.set_title(title or "BiLD threshold sweep (labels: fallback/rollback)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def sweep_title(cfg: EvalConfig) -> str:
    """The figure's title: the task, the rule and the drafters."""
    drafters = "small model + prompt lookup" if cfg.prompt_lookup else "small model"
    return f"{cfg.name or cfg.task}: BiLD thresholds (fallback/rollback), {drafters}"


def build_sweep_parser():
    """The run flags plus --fallback, --rollback and --task."""
    parser = build_parser(
        "sweep",
        description="Sweep BiLD's fallback and rollback thresholds against the large-model baseline.",
        exclude=("fallback_threshold", "rollback_threshold"),
    )
    parser.add_argument(
        "--fallback",
        required=True,
        help="comma-separated fallback thresholds in [0, 1] or 'auto' (the "
        "adaptive draft policy, timing-free under the rollback rule), e.g. 0.3,0.5,0.7,0.9 or auto",
    )
    parser.add_argument("--rollback", required=True, help="comma-separated rollback thresholds, e.g. 1,2,3,5,inf")
    parser.add_argument("--task", choices=TASKS, help="task (default: the config file's task)")
    parser.add_argument(
        "--quality_budget",
        type=float,
        default=0.5,
        help="the pick: the fastest point at most this "
        "far below the baseline's score (BLEU / ROUGE-L points; default 0.5)",
    )
    return parser


def plan_sweep(argv: list[str] | None) -> tuple[list[EvalConfig], Path, float]:
    """Resolve and validate the baseline config and one config per threshold pair (no model touched); also the
    sweep folder and the quality budget."""
    namespace = build_sweep_parser().parse_args(argv)
    given = vars(namespace)
    task = given.pop("task", None)
    budget = given.pop("quality_budget")
    if math.isnan(budget) or budget < 0:
        raise ConfigError(f"--quality_budget must be >= 0, got {budget}")
    if task is None and given.get("config"):
        task = load_config_file(given["config"]).get("task")
    fallbacks = parse_values(given.pop("fallback"), "--fallback", parse_threshold)
    rollbacks = parse_values(given.pop("rollback"), "--rollback", parse_threshold)
    for rb in rollbacks:
        if math.isnan(rb) or rb < 0:
            raise ConfigError(f"--rollback values must be >= 0 or 'inf', got {rb}")
    for fb in fallbacks:
        if fb != "auto" and (math.isnan(fb) or not 0 <= fb <= 1):
            raise ConfigError(f"--fallback values must be in [0, 1] or 'auto', got {fb}")
    base = config_from_namespace(namespace, task or "translation")
    if base.mode not in ("bild", "exact"):
        raise ConfigError(
            f"--mode must be bild or exact for a sweep (the baseline always runs large), got {base.mode!r}"
        )
    sweep_dir = Path(base.output_dir)
    if "output_dir" not in given:
        sweep_dir = Path("runs") / (base.name or base.task) / "sweep"
    configs = [dataclasses.replace(base, mode="large", prompt_lookup=0, output_dir=str(sweep_dir / "large"))]
    for fb in fallbacks:
        for rb in rollbacks:
            point = dataclasses.replace(base, fallback_threshold=fb, rollback_threshold=rb)
            configs.append(dataclasses.replace(point, output_dir=str(sweep_dir / point.run_name())))
    for cfg in configs:
        validate(cfg)
    return configs, sweep_dir, budget


def main(argv: list[str] | None = None) -> list[dict[str, Any]] | None:
    """Run the sweep; returns the CSV rows (main process)."""
    from .modeling import load_models, resolve_device

    try:
        configs, sweep_dir, budget = plan_sweep(argv)
        state = get_state(configs[0].device)
        examples = load_examples(configs[0])
        dones = [prepare_run_dir(cfg, state) for cfg in configs]
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None

    cache: dict[str, Any] = {}

    def get_bundle():
        if "bundle" not in cache:
            cache["bundle"] = load_models(configs[1], resolve_device(configs[1], state))
        return cache["bundle"]

    if state.num_processes == 1:  # interleaved: every point timed on each example in turn
        all_results = run_interleaved(configs, examples, dones, get_bundle, state)
    else:  # one point after the other, each split between the processes
        all_results = [run(cfg, examples, done, get_bundle, state) for cfg, done in zip(configs, dones)]
    if not state.is_main_process:
        return None

    baseline_latency = all_results[0]["latency"]["mean"]
    rows = [make_row("large (baseline)", all_results[0], configs[0].output_dir, baseline_latency)]
    for cfg, results in zip(configs[1:], all_results[1:]):
        label = f"fb={format_threshold(cfg.fallback_threshold)} rb={format_threshold(cfg.rollback_threshold)}"
        rows.append(make_row(label, results, cfg.output_dir, baseline_latency))
    for row in rows:
        row["speedup_median"] = median_speedup(configs[0].output_dir, row["run_dir"])
    for row, on_front in zip(rows, pareto_mask([r["speedup_median"] for r in rows], [r["score"] for r in rows])):
        row["pareto"] = on_front
    pick = pick_within_budget(rows, budget)
    write_csv(rows, sweep_dir / "sweep.csv")
    plot_sweep(rows, sweep_dir / "sweep.png", title=sweep_title(configs[1]), budget=budget, pick=pick)
    (sweep_dir / "sweep.json").write_text(json.dumps(rows, indent=2, default=str) + "\n", encoding="utf-8")
    for row in rows:
        mark = "*" if row["pareto"] else " "
        print(
            f"{mark} {row['label']:<22} {row['metric']}={row['score']:.2f} speedup={row['speedup_median']:.2f}x "
            f"(median of per-example ratios; mean latency ratio {row['speedup']:.2f}x)"
        )
    if pick is None:
        print(f"pick: no point within {budget:g} of the baseline's {rows[0]['metric']}")
    else:
        print(
            f"pick: {pick['label']} (the fastest within {budget:g} of the baseline's {rows[0]['metric']}: "
            f"{pick['score']:.2f} against {rows[0]['score']:.2f}, {pick['speedup_median']:.2f}x)"
        )
    print(f"wrote {sweep_dir / 'sweep.csv'} and {sweep_dir / 'sweep.png'} (* = Pareto front)")
    return rows
