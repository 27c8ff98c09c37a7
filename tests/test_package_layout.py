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
