"""The README's quickstart runs as written (its own asserts check the exact mode)."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_quickstart_runs():
    code = re.search(r"## Quickstart.*?```python\n(.*?)```", README.read_text(), re.S).group(1)
    scope = {}
    exec(compile(code, "README quickstart", "exec"), scope)
    assert scope["gen"].stats.new_tokens == 32
    assert scope["out"].shape == (1, 5 + 32)


def test_links_point_at_files_that_exist():
    """The README shrank to a newcomer's page and links into docs/: every relative link there and in docs/
    names a file of the checkout."""
    root = README.parent
    pages = [README, root / "CONTRIBUTING.md", *sorted((root / "docs").rglob("*.md"))]
    missing = []
    for page in pages:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            path = target.split("#")[0]
            if path and not re.match(r"[a-z]+:", path) and not (page.parent / path).exists():
                missing.append(f"{page.relative_to(root)}: {target}")
    assert not missing, missing
