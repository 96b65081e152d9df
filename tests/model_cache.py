"""One converted SmolLM2 model for every test that needs real weights.

Converting the packaged GGUF takes about 20 s, so the conversion cache lives in pytest's
own cache dir (`.pytest_cache/d/efficientllm-models`) and survives between sessions; with
the cache provider off it is a session temp dir. A test module uses it by importing the
fixture: `from tests.model_cache import smollm2_cache  # noqa: F401`. An
EFFICIENTLLM_CACHE_DIR already set in the environment wins.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from runners.models import catalog, local, weights

MODEL = "smollm2-135m"


@pytest.fixture(scope="session")
def smollm2_cache(request: pytest.FixtureRequest,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The conversion cache dir (EFFICIENTLLM_CACHE_DIR is set to it for the session)."""
    card = catalog.model_card(MODEL)
    if not local.package_available(card):
        pytest.skip(f"{card.requires} (the SmolLM2 GGUF) is not installed")
    preset = os.environ.get(weights.CACHE_ENV)
    if preset:
        yield Path(preset)
        return
    cache = getattr(request.config, "cache", None)
    root = cache.mkdir("efficientllm-models") if cache is not None else \
        tmp_path_factory.mktemp("efficientllm-models")
    os.environ[weights.CACHE_ENV] = str(root)
    try:
        yield Path(root)
    finally:
        os.environ.pop(weights.CACHE_ENV, None)
