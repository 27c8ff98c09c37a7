"""`custom_generate` entry for the Hub / a local folder:

    large.generate(ids, custom_generate="<this repo or folder>", trust_remote_code=True, small_model=small,
                   fallback_threshold=0.6, rollback_threshold=5.0)

transformers calls `generate(model=large, **all_generate_arguments)`; the engine lives in the
`big-little-decoder` package (see requirements.txt).
"""

from bild.integration import generate_from_hub as generate  # noqa: F401
