"""`efficientllm` / `efficientllm tui`: open the dashboard."""

from __future__ import annotations

import argparse

from efficientllm_tui.commands.common import db_path, home_dir


def cmd_tui(args: argparse.Namespace) -> int:
    home = home_dir()
    from efficientllm_tui.tui.app import EfficientLLMApp

    EfficientLLMApp(db_path=db_path(args, home), home=home).run()
    return 0
