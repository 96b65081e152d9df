"""Fixtures for Pilot tests: a temp data dir, a seeded DB, a fake sample feed."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from efficientllm_tui.live.feed import SyntheticFeed
from efficientllm_tui.tui.app import EfficientLLMApp

from .scenes import make_app


@pytest.fixture
def new_app(tmp_path: Path) -> Iterator[Callable[..., EfficientLLMApp]]:
    """Build apps over tmp_path/home (seeded unless seed=False); feeds stop at teardown."""
    feeds: list[SyntheticFeed] = []

    def build(**kwargs: Any) -> EfficientLLMApp:
        app, feed = make_app(tmp_path / "home", **kwargs)
        feeds.append(feed)
        return app

    yield build
    for feed in feeds:
        feed.stop()
