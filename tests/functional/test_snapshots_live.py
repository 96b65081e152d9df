"""SVG snapshots of states users see mid-interaction, at 80x24 and 120x36 (scenes_live).

Update after an intended change:
`pytest tests/functional/test_snapshots_live.py --snapshot-update`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot

from .scenes_live import LIVE_SCENES, drive_live_scene, live_scene_app

CASES = [(scene, size) for scene in LIVE_SCENES for size in ((80, 24), (120, 36))]


@pytest.mark.parametrize(("scene", "size"), CASES, ids=[f"{s}-{w}x{h}" for s, (w, h) in CASES])
def test_scene(
    scene: str, size: tuple[int, int], tmp_path: Path, snap_compare: Callable[..., bool]
) -> None:
    app, feed = live_scene_app(tmp_path / "home", scene)

    async def before(pilot: Pilot[Any]) -> None:
        await drive_live_scene(app, pilot, scene)

    try:
        assert snap_compare(app, terminal_size=size, run_before=before)
    finally:
        feed.stop()
