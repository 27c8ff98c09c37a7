"""The package layout: engine at the top, tooling in sub-packages, 0.2 module paths still importing."""
def test_old_module_paths_still_import():
    import bild
    import bild.cost_model
    import bild.pair
    from bild.controlled import build_controlled_pair
    from bild.theory import tv_distance
    assert bild.pair is bild.pairs.smollm2 and bild.cost_model is bild.analysis.cost_model
    assert build_controlled_pair is bild.pairs.controlled.build_controlled_pair
    assert tv_distance is bild.analysis.theory.tv_distance


def test_import_is_light_and_every_public_name_resolves():
    """`import bild` loads neither torch nor transformers (the command line answers at once); each public name
    and submodule loads them on first use, and is the object its defining module holds."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    src = str(Path(__file__).resolve().parents[1] / "src")
    code = ("import json, sys, bild\nheavy = [m for m in ('torch', 'transformers') if m in sys.modules]\n"
            "got = {n: type(getattr(bild, n)).__name__ for n in bild.__all__}\n"
            "print(json.dumps([heavy, got, bild.adapters.__name__, 'torch' in sys.modules]))")
    env = dict(os.environ, PYTHONPATH=src + os.pathsep + os.environ.get("PYTHONPATH", ""))
    heavy, got, adapters, torch_after = json.loads(subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300, check=True).stdout)
    assert heavy == [] and torch_after and adapters == "bild.adapters"
    import bild
    from bild import generator, policies, stats
    assert sorted(got) == sorted(bild.__all__)
    assert bild.BiLDGenerator is generator.BiLDGenerator and bild.generate is generator.generate
    assert bild.AdaptivePolicy is policies.AdaptivePolicy and bild.GenerationStats is stats.GenerationStats
    assert "BiLDGenerator" in dir(bild)
