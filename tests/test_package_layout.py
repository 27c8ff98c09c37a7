"""The package layout: engine at the top, tooling in sub-packages, 0.2 module paths still importing."""


def test_old_module_paths_still_import():
    import bild.cost_model
    import bild.pair
    from bild.controlled import build_controlled_pair
    from bild.theory import tv_distance

    import bild

    assert bild.pair is bild.pairs.smollm2 and bild.cost_model is bild.analysis.cost_model
    assert build_controlled_pair is bild.pairs.controlled.build_controlled_pair
    assert tv_distance is bild.analysis.theory.tv_distance


# --- the import graph (docs/architecture.md; `lint-imports` checks the declared layers in CI) ---------------------
import ast  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

SRC = Path(__file__).resolve().parents[1] / "src" / "bild"
TOOLING = ("bild.pairs", "bild.evaluation", "bild.analysis", "bild.cli")
KNOWN: set[tuple[str, str]] = set()  # imports exempt from the cycle check: none


def import_graph(src: Path = SRC) -> dict[str, set[str]]:
    """module -> the bild modules it imports, at module level or inside functions (a local import that dodges a
    cycle is still a dependency)."""
    mods = {}
    for p in src.rglob("*.py"):
        parts = list(p.relative_to(src.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = p
    graph = {}
    for m, p in mods.items():
        package = m.split(".") if p.name == "__init__.py" else m.split(".")[:-1]
        out = set()
        for n in ast.walk(ast.parse(p.read_text())):
            if isinstance(n, ast.Import):
                names = [a.name for a in n.names]
            elif isinstance(n, ast.ImportFrom):
                base = n.module or ""
                if n.level:
                    base = ".".join(package[: len(package) - n.level + 1] + ([base] if base else []))
                names = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in n.names]
            else:
                continue
            for t in names:
                while t and t not in mods:
                    t = t.rpartition(".")[0]
                if t.startswith("bild") and t != m and (m, t) not in KNOWN:
                    out.add(t)
        graph[m] = out
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle_in_bild():
    """Not even through function-local imports (0.12 had adapters -> online_costs -> policies -> adapters and
    adapters -> vocabulary -> feature_draft -> adapters)."""
    assert cycles(import_graph()) == []


def test_the_engine_imports_no_tooling():
    """`bild.pairs`, `bild.evaluation`, `bild.analysis` and `bild.cli` import the engine, never the reverse (the
    package root `bild` re-exports both and is neither)."""
    graph = import_graph()
    engine = [m for m in graph if m != "bild" and not m.startswith(TOOLING)]
    assert {m: sorted(t for t in graph[m] if t.startswith(TOOLING)) for m in engine} == {m: [] for m in engine}


def test_names_of_0_12_still_import():
    """Names that moved out of `bild.adapters`, `bild.generator`, `bild.online_costs` and
    `bild.analysis.cost_model` still import from there, as the same objects."""
    import bild
    from bild import caches, checks, families, online_costs, options, probes, timing
    from bild.adapters import (  # noqa: F401
        ModelAdapter,
        batch_layout,
        capabilities,
        new_cache,
        state_layers,
        to_device,
        window_rollback_works,
    )
    from bild.analysis.cost_model import CostTable

    with pytest.deprecated_call(match="moved to `bild.families"):
        from bild.adapters import check_model, rollback_is_exact
    with pytest.deprecated_call(match="moved to `bild.families.RECURRENT_EXACT_FROM`"):
        assert bild.adapters.RECURRENT_EXACT_FROM is families.RECURRENT_EXACT_FROM
    with pytest.deprecated_call(match="moved to `bild.drafts.load_draft`"):
        from bild.vocabulary import load_draft
    from bild.generator import _POLICIES, POLICIES_PER_MODEL, check_generation_config, check_options, lossy

    assert (check_model, rollback_is_exact) == (families.check_model, families.rollback_is_exact)
    assert (capabilities, new_cache) == (probes.capabilities, caches.new_cache)
    assert (check_options, lossy, _POLICIES, POLICIES_PER_MODEL) == (
        options.check_options,
        options.lossy,
        options._POLICIES,
        options.POLICIES_PER_MODEL,
    )
    assert check_generation_config is checks.check_generation_config and load_draft is bild.load_draft
    assert (online_costs.clock, online_costs.model_times, CostTable) == (
        timing.clock,
        timing.model_times,
        timing.CostTable,
    )


def test_import_is_light_and_every_public_name_resolves():
    """`import bild` loads neither torch nor transformers (the command line answers at once); each public name
    and submodule loads them on first use, and is the object its defining module holds."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    src = str(Path(__file__).resolve().parents[1] / "src")
    code = (
        "import json, sys, bild\nheavy = [m for m in ('torch', 'transformers') if m in sys.modules]\n"
        "got = {n: type(getattr(bild, n)).__name__ for n in bild.__all__}\n"
        "print(json.dumps([heavy, got, bild.adapters.__name__, 'torch' in sys.modules]))"
    )
    env = dict(os.environ, PYTHONPATH=src + os.pathsep + os.environ.get("PYTHONPATH", ""))
    heavy, got, adapters, torch_after = json.loads(
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300, check=True
        ).stdout
    )
    assert heavy == [] and torch_after and adapters == "bild.adapters"
    import bild
    from bild import generator, policies, stats

    assert sorted(got) == sorted(bild.__all__)
    assert bild.BiLDGenerator is generator.BiLDGenerator and bild.generate is generator.generate
    assert bild.AdaptivePolicy is policies.AdaptivePolicy and bild.GenerationStats is stats.GenerationStats
    assert "BiLDGenerator" in dir(bild)
