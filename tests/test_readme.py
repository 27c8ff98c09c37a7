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
