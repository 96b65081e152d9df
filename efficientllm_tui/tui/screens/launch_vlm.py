"""Launch's vision-language columns: the task their pairs run (vqa or captioning), switched
with `t` on such a column and shown on the info line."""

from __future__ import annotations

from typing import Any

from efficientllm_tui.matrix import VISION_TASKS, vision_values


class VisionTasks:
    """Mixed into the Launch screen: the task of its vision-language pairs."""

    vlm_task: str = VISION_TASKS[0]
    """What vision-language columns run (inference) or train on (fine-tuning)."""

    def _vlm(self, tech: dict[str, Any], card: dict[str, Any]) -> dict[str, str]:
        """A vision-language pair's task `--set` (matrix.vision_values); none for text."""
        return vision_values(tech, card, self.vlm_task)

    def vlm_column(self, card: dict[str, Any] | None) -> bool:
        """Whether `card` is a vision-language model (where `t` switches the task)."""
        return card is not None and bool(vision_values({"family": "inference"}, card, ""))

    def vlm_note(self, tech: dict[str, Any], card: dict[str, Any]) -> str:
        """The info line's note on a vision-language pair; empty for text."""
        return (f" · task [b]{self.vlm_task}[/b] (t: vqa/captioning)"
                if self._vlm(tech, card) else "")

    def action_vlm_task(self) -> None:
        """Switch the task vision-language pairs run: vqa, captioning."""
        at = VISION_TASKS.index(self.vlm_task)
        self.vlm_task = VISION_TASKS[(at + 1) % len(VISION_TASKS)]
        self._redraw_marks()  # type: ignore[attr-defined]
        self._explain()  # type: ignore[attr-defined]
