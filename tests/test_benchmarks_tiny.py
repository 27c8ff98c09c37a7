"""benchmarks/billion_pair.py (the GPU table's script) end to end on the CPU at its tiny size: the tables' structure,
the records it writes, and bild's outputs equal to large greedy's in fp32. No timing is asserted."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_benchmark(name: str):
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    bench = load_benchmark("billion_pair")
    out = tmp_path_factory.mktemp("billion_pair") / "records.jsonl"
    # the GPU preset (agreements 0.6 / 0.9, batch 1 and 8), shortened
    text = bench.main(
        [
            "--size",
            "tiny",
            "--preset",
            "gpu",
            "--prompts",
            "1",
            "--new-tokens",
            "8",
            "--chains",
            "2",
            "4",
            "--cost-repeats",
            "1",
            "--out",
            str(out),
        ]
    )
    records = [json.loads(line) for line in out.read_text().splitlines()]
    return bench, text, records, out


def _table(text: str, header_start: str) -> list[list[str]]:
    lines = text.splitlines()
    i = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[i:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


def test_summary_table(tiny_run):
    bench, text, records, _ = tiny_run
    assert "Device: **" in text and "Command: `python benchmarks/billion_pair.py --size tiny" in text
    assert "float32" in text and "torch " in text and "transformers " in text
    summary = _table(text, "| agreement (target / measured)")
    head, sep, body = summary[0], summary[1], summary[2:]
    assert len(head) == 10 and all(set(c) <= set("-") for c in sep)
    assert [(r[0].split(" / ")[0], r[1]) for r in body] == [("0.60", "1"), ("0.60", "8"), ("0.90", "1"), ("0.90", "8")]
    for row in body:
        assert len(row) == 10
        assert row[3].endswith("(1/1)")  # bild defaults: identical to large greedy
        assert " k=" in row[4] and row[4].endswith("(1/1)")  # best fixed chain, named
        assert re.fullmatch(r"\d+\.\d\dx at k=\d+ \(flat verify \d+\.\d\dx\)", row[7])  # optimum, measured costs
        if row[1] == "1":
            assert row[6].endswith("(1/1)")  # transformers' assisted generation at batch 1
        else:
            assert row[6] == "n/a (transformers: batch 1 only)"
        if bench.has_tree_drafts():  # run and exact, or refused by bild with its reason (e.g. at batch 8)
            ran = " k=" in row[5] and row[5].endswith("(1/1)")
            assert ran or (row[5].startswith("n/a (") and row[5] != bench.NO_TREE)
        else:
            assert row[5] == bench.NO_TREE
    assert "Targets (issue 34):" in text and "Total " in text


def test_records_and_exact_outputs(tiny_run):
    bench, _, records, _ = tiny_run
    kinds = [r["type"] for r in records]
    assert kinds[0] == "meta" and kinds[-1] == "done" and kinds.count("pair") == 2 and kinds.count("costs") == 4
    runs = [r for r in records if r["type"] == "run"]
    for target in (0.6, 0.9):
        for batch in (1, 8):
            methods = {r["method"] for r in runs if r["target"] == target and r["batch"] == batch}
            want = {bench.LARGE, bench.DEFAULTS, "bild chain k=2", "bild chain k=4"}
            want |= {bench.ASSISTED} if batch == 1 else set()
            missing = {
                r["method"]: r["reason"]
                for r in records
                if r["type"] == "missing" and r["target"] == target and r["batch"] == batch
            }
            if bench.has_tree_drafts() and "bild tree k=2" not in missing:
                want.add("bild tree k=2")
            assert methods == want
            assert set(missing) == {bench.ASSISTED, "bild tree k=2"} - want
    # fp32: every exact method returns large greedy's output, token for token
    assert all(r["identical"] for r in runs)
    assert all(r["tokens"] == 8 * r["batch"] for r in runs)
    for r in records:
        if r["type"] == "agreement":
            assert 0.0 <= r["agreement"] <= 1.0


def test_tables_reprint_from_the_file(tiny_run, capsys):
    bench, text, _, out = tiny_run
    again = bench.main(["--from", str(out)])
    assert again == text


def test_interrupted_file_still_prints(tiny_run, tmp_path):
    bench, _, records, _ = tiny_run
    cut = tmp_path / "cut.jsonl"
    # interrupted in the middle of the last block: what was measured is printed, the run is marked unfinished
    last_run = max(i for i, r in enumerate(records) if r["type"] == "run")
    cut.write_text("".join(json.dumps(r) + "\n" for r in records[: last_run - 2]) + json.dumps(records[last_run])[:20])
    text = bench.main(["--from", str(cut)])
    assert "run not finished" in text
    assert len(_table(text, "| agreement (target / measured)")) == 2 + 4


def test_tree_column_calls_draft_tree_where_bild_takes_it(tmp_path, monkeypatch):
    """Before tree drafts are merged, a stand-in BiLDGenerator that takes `draft_tree` (and drafts a chain) shows that
    the script builds `BiLDGenerator(small, large, draft_tree=k)` and reports it in the tree column."""
    bench = load_benchmark("billion_pair")
    seen = []

    class WithTrees(bench.BiLDGenerator):
        def __init__(self, small, large, draft_tree=None, **kw):
            seen.append(draft_tree)
            super().__init__(small, large, **kw)

    monkeypatch.setattr(bench, "BiLDGenerator", WithTrees)
    text = bench.main(
        [
            "--size",
            "tiny",
            "--agreements",
            "0.9",
            "--batch-sizes",
            "1",
            "--prompts",
            "1",
            "--new-tokens",
            "4",
            "--chains",
            "2",
            "--trees",
            "3",
            "--cost-repeats",
            "1",
            "--out",
            str(tmp_path / "r.jsonl"),
        ]
    )
    assert 3 in seen
    row = _table(text, "| agreement (target / measured)")[2]
    assert re.fullmatch(r"\d+\.\d\dx k=3 \(1/1\)", row[5])


@pytest.mark.parametrize(
    "argv",
    [
        ["--size", "tiny", "--prompts", "0"],
        ["--size", "tiny", "--agreements", "1.5"],
        ["--size", "tiny", "--chains", "0"],
    ],
)
def test_bad_arguments_are_refused(argv):
    bench = load_benchmark("billion_pair")
    with pytest.raises(SystemExit):
        bench.main(argv)
