"""The `bild` command line answers without torch: --version, help listing every command on one line, one-line
argument errors with exit status 2; `bild pair clean` removes only what the pair's build writes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"


def run_cli(*args, env_extra=None):
    """`bild ARGS` in a fresh interpreter: (rc, stdout, stderr, heavy modules it imported)."""
    code = (
        "import json, sys\nfrom bild.cli import main\ntry:\n    rc = main(sys.argv[1:])\nexcept SystemExit as e:\n"
        "    rc = e.code\nsys.stdout.flush()\nprint(json.dumps([rc, [m for m in ('torch', 'transformers') "
        "if m in sys.modules]]), file=sys.stderr)"
    )
    env = dict(os.environ, PYTHONPATH=str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", ""), **(env_extra or {}))
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=120)
    *err, last = proc.stderr.rstrip("\n").split("\n")
    rc, heavy = json.loads(last)
    return rc, proc.stdout, "\n".join(err), heavy


def test_version():
    import bild

    rc, out, err, heavy = run_cli("--version")
    assert (rc, out.strip(), heavy) == (0, f"bild {bild.__version__}", [])


@pytest.mark.parametrize("args", [(), ("--help",)])
def test_help_lists_every_command_on_one_line(args):
    from bild.cli import COMMANDS

    rc, out, err, heavy = run_cli(*args)
    assert (rc, heavy) == (0, [])
    assert "``" not in out
    for name in COMMANDS:
        assert any(line.split()[:1] == [name] and len(line.split()) > 1 for line in out.splitlines()), (name, out)


def test_pair_help_lists_every_command_on_one_line():
    from bild.pairs.recipe import COMMANDS as RECIPE

    rc, out, err, heavy = run_cli("pair", "--help")
    assert (rc, heavy) == (0, [])
    for name in ["build", "info", "clean", *RECIPE]:
        assert any(line.split()[:1] == [name] and len(line.split()) > 1 for line in out.splitlines()), (name, out)


@pytest.mark.parametrize(
    "args, names",
    [
        (("nope",), ["COMMAND", "'nope'", "'demo'", "'pair'"]),
        (("demo", "--verification", "x"), ["--verification", "'rollback'", "'exact'", "'block'"]),
        (("demo", "--fallback_threshold", "2"), ["--fallback_threshold", "[0, 1]"]),
        (("demo", "--max_small_steps", "0"), ["--max_small_steps", ">= 1"]),
        (("demo", "--prompt_lookup", "-1"), ["--prompt_lookup", ">= 0"]),
        (("pair", "bogus"), ["COMMAND", "'bogus'", "'build'", "'clean'", "'train-feature'"]),
        (("pair", "train", "--out", "x"), ["--records"]),
        (("pair", "gen-data", "--out", "x", "--part", "half"), ["--part", "'train'", "'tune'", "'all'"]),
    ],
)
def test_bad_argument_is_one_line_exit_2_before_torch(args, names):
    rc, out, err, heavy = run_cli(*args)
    assert (rc, out, heavy) == (2, "", [])
    assert len(err.splitlines()) == 1, err
    for name in names:
        assert name in err, (name, err)


def test_clean_removes_only_the_pair_cache(tmp_path):
    cache = tmp_path / "pair"
    for part, size in (("gguf", 3), ("large", 5), ("small", 7)):
        (cache / part / "sub").mkdir(parents=True)
        (cache / part / "sub" / "w.bin").write_bytes(b"x" * size * 100_000)
    (cache / "notes.txt").write_text("mine")
    rc, out, err, heavy = run_cli("pair", "--cache", str(cache), "info")
    assert rc == 0 and "total: 1.5 MB" in out
    rc, out, err, heavy = run_cli("pair", "--cache", str(cache), "clean")
    assert (rc, heavy) == (0, [])
    assert "removed 1.5 MB" in out
    assert sorted(p.name for p in cache.iterdir()) == ["notes.txt"]
    (cache / "notes.txt").unlink()
    (cache / "large").mkdir()
    rc, out, err, heavy = run_cli("pair", "--cache", str(cache), "clean")
    assert rc == 0 and not cache.exists()
    rc, out, err, heavy = run_cli("pair", "--cache", str(cache), "clean")
    assert rc == 0 and "nothing to remove" in out


def test_console_script_is_the_cli():
    text = (SRC.parent / "pyproject.toml").read_text()
    assert 'bild = "bild.cli:main"' in text
