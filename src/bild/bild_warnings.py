"""The warnings bild itself issues, one class each kind, so that a caller (or a test run: pyproject's
pytest ``filterwarnings``) can select bild's own warnings apart from torch's and transformers'.

Each also derives from the standard category it used to be, so ``pytest.warns(RuntimeWarning)`` and
``warnings.filterwarnings("ignore", category=UserWarning)`` keep matching.
"""


class BiLDWarning(UserWarning):
    """Base of every warning bild issues about how it was called (e.g. a `streamer` transformers drops)."""


class BiLDRuntimeWarning(BiLDWarning, RuntimeWarning):
    """Something bild met at run time and handled (e.g. non-finite draft logits, whose draft steps are dropped)."""
