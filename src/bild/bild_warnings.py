"""The warnings bild itself issues, one class each kind, so that a caller (or a test run: pyproject's
pytest ``filterwarnings``) can select bild's own warnings apart from torch's and transformers'.

`moved_names` serves the names of 0.12 that moved to a module above their old one.

Each also derives from the standard category it used to be, so ``pytest.warns(RuntimeWarning)`` and
``warnings.filterwarnings("ignore", category=UserWarning)`` keep matching.
"""


class BiLDWarning(UserWarning):
    """Base of every warning bild issues about how it was called (e.g. a `streamer` transformers drops)."""


class BiLDRuntimeWarning(BiLDWarning, RuntimeWarning):
    """Something bild met at run time and handled (e.g. non-finite draft logits, whose draft steps are dropped)."""


def moved_names(module: str, moved: dict[str, str]):
    """A module `__getattr__` for names that moved from `module` to `bild.<moved[name]>`, a module above it: the name
    still resolves there, imported by name on first use (the lower layer never depends on the upper one), with a
    DeprecationWarning naming its home."""

    def __getattr__(name: str):
        if name not in moved:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        import importlib
        import warnings

        home = f"bild.{moved[name]}"
        warnings.warn(
            f"`{module}.{name}` moved to `{home}.{name}` in 0.13; the old name goes in 0.14",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(importlib.import_module(home), name)

    return __getattr__
