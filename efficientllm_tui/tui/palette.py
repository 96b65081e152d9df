"""The command palette's entries for a screen's own keys: each shown binding by its human
name, where it acts and its key, so every action is reachable by name as well as by key."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from functools import partial
from typing import Any

from textual.app import App, SystemCommand
from textual.screen import Screen


def binding_commands(app: App[Any], screen: Screen[Any], screen_names: Mapping[str, str]
                     ) -> Iterator[SystemCommand]:
    """The enabled, described bindings of `screen` (each action once; screen switches and
    system bindings are left to the app), labelled with the screen's name in `screen_names`
    (or its PALETTE_NAME) and the key."""
    seen: set[str] = set()
    for active in screen.active_bindings.values():
        b = active.binding
        if b.action.startswith("show(") or b.action in seen or b.system:
            continue  # screens are offered by the app, once
        if b.description and b.show and active.enabled:
            seen.add(b.action)
            where = getattr(screen, "PALETTE_NAME", None) or screen_names.get(
                getattr(screen, "NAME", ""), "this screen")
            yield SystemCommand(b.description, f"{where} · key {app.get_key_display(b)}",
                                partial(app.run_action, b.action, active.node))
