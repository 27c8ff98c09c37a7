"""The wheel carries what `pip install "big-little-decoder[pair]"` from an index needs.

One wheel is built per session from a copy of the project's packaging inputs (pyproject.toml,
README.md, LICENSE, src/), so the checkout gets no build/ or egg-info folders. The tests check that
it holds the offline pair's draft and the code the `custom_generate/` folder imports, and that a
NON-editable install of it in a fresh virtual environment imports bild from site-packages and
finds the draft there. Both are marked slow (`-m "not slow"` skips them); CI runs them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ASSET = "bild/pairs/assets/smollm2-135m-draft.safetensors"
SOURCE_ASSET = ROOT / "src" / ASSET

pytestmark = pytest.mark.slow


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    if not SOURCE_ASSET.is_file():
        pytest.skip(f"{SOURCE_ASSET} absent: this checkout has no draft asset to package")
    tmp = tmp_path_factory.mktemp("wheel")
    tree = tmp / "tree"
    tree.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, tree / name)
    shutil.copytree(ROOT / "src", tree / "src", ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
    t0 = time.time()
    proc = subprocess.run(
        # with build isolation, as users build it: pyproject's build requirements come from the index (a
        # machine's own setuptools may be too old for its metadata; CI's system Python has 65.5)
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--disable-pip-version-check",
            "-q",
            "-w",
            str(tmp / "dist"),
            str(tree),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    wheels = list((tmp / "dist").glob("big_little_decoder-*.whl"))
    assert len(wheels) == 1, wheels
    print(f"\nwheel {wheels[0].name}: {wheels[0].stat().st_size / 1e6:.1f} MB, built in {time.time() - t0:.1f}s")
    return wheels[0]


def test_wheel_carries_the_draft_and_the_custom_generate_entry(wheel):
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        assert ASSET in names, sorted(n for n in names if not n.endswith(".py"))
        assert _sha256(zf.read(ASSET)) == _sha256(SOURCE_ASSET.read_bytes())  # the very file, not a stub
        # custom_generate/generate.py does `from bild.integration import generate_from_hub`
        assert "bild/integration.py" in names
        assert "def generate_from_hub" in zf.read("bild/integration.py").decode()
        for module in (
            "bild/__init__.py",
            "bild/generator.py",
            "bild/pairs/smollm2.py",
            "bild/pairs/alignment.py",
            "bild/cli.py",
            "bild/evaluation/runner.py",
        ):
            assert module in names, module
        info = zf.getinfo(ASSET)
        metadata = zf.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "Provides-Extra: pair" in metadata
    size = wheel.stat().st_size
    print(
        f"wheel {size / 1e6:.1f} MB; draft {info.file_size / 1e6:.1f} MB ({info.compress_size / 1e6:.1f} MB compressed)"
    )
    # the draft is most of the wheel; anything much larger means something else slipped in
    assert info.compress_size < size < info.compress_size + 2_000_000


def _site_packages(python: Path) -> list[str]:
    out = subprocess.run(
        [str(python), "-c", "import site, json; print(json.dumps(site.getsitepackages()))"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return json.loads(out)


def test_non_editable_install_finds_the_draft_in_site_packages(wheel, tmp_path):
    """`pip install <wheel>` into a fresh venv: bild comes from site-packages, not the source tree,
    and `bild.pairs.smollm2` resolves the draft inside it."""
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(system_site_packages=True, with_pip=False, symlinks=os.name != "nt").create(env_dir)
    python = env_dir / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    own = _site_packages(python)[0]
    # torch / transformers come from the running interpreter's environment (which may itself be a
    # venv, whose packages --system-site-packages alone would not reach), but never a bild from it
    parents = [
        p
        for p in sys.path
        if p and os.path.isdir(p) and "site-packages" in p and not os.path.exists(os.path.join(p, "bild"))
    ]
    Path(own, "_bild_test_parent_env.pth").write_text("\n".join(parents) + "\n")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--no-deps",
            "--no-index",
            "--disable-pip-version-check",
            "-q",
            str(wheel),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if proc.returncode != 0 and "no such option: --python" in proc.stderr:  # pragma: no cover - pip < 22.3
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", own, str(wheel)],
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "BILD_DRAFT_WEIGHTS", "PYTHONHOME")}
    code = (
        "import json, bild.pairs.smollm2 as s, bild.integration as i\n"
        "w = s.default_draft_weights()\n"
        "print(json.dumps({'bild': s.__file__, 'draft': str(w), 'exists': w.is_file(),"
        " 'sha256': s.file_sha256(w) if w.is_file() else None, 'entry': callable(i.generate_from_hub)}))\n"
    )
    proc = subprocess.run([str(python), "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    site = Path(own).resolve()
    assert Path(got["bild"]).resolve().is_relative_to(site), got
    assert not Path(got["bild"]).resolve().is_relative_to(ROOT), got
    assert Path(got["draft"]).resolve() == site / ASSET, got
    assert got["exists"] and got["entry"]
    assert got["sha256"] == _sha256(SOURCE_ASSET.read_bytes())
