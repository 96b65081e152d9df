"""Launch: pick model x technique pairs from a matrix, set parameters, queue them.

The queue shown here is the one on disk (queue.snapshot, read by the app every second): runs
queued by the CLI or another TUI show too, and what is queued goes on after the app quits.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import DataTable, Input, Label, Select, Static

from efficientllm_tui.errors import BadInput
from efficientllm_tui.matrix import (
    Group,
    groups,
    model_reason,
    models,
    pair_reason,
    technique_reason,
)
from efficientllm_tui.tui.screens.base import AppScreen
from efficientllm_tui.tui.screens.launch_queue import QUEUE_COLUMNS, QueuePanel
from efficientllm_tui.tui.screens.launch_vlm import VisionTasks
from runners import preflight
from runners.protocol import ProtocolError, RunSpec, parse_set

if TYPE_CHECKING:
    pass

_INT_FIELDS = (
    ("steps", "steps", 8),
    ("warmup", "warmup", 2),
    ("batch_size", "batch", 1),
    ("seq_len", "seq len", 64),
    ("new_tokens", "new tok", 32),
    ("seed", "seed", 0),
)
_SELECTED = Text("●", style="bold green", justify="center")
_FREE = Text("·", style="dim", justify="center")
_INVALID = Text("✗", style="red dim", justify="center")
_TOO_BIG = Text("⊘", style="yellow", justify="center")
"""A pair whose weights cannot fit the chosen device's memory (runners.preflight)."""
_SIZE_SUFFIX = re.compile(r"-(\d+(\.\d+)?[bm]|mini|small|medium|large)$")
QUEUE_EMPTY = (
    "Nothing queued. `s` queues the selected pairs in the order picked, one run per device "
    "at a time. The queue is on disk: it goes on when you quit; runs queued from a shell "
    "show here too."
)


class LaunchScreen(QueuePanel, VisionTasks, AppScreen):
    """A matrix of techniques (rows, grouped as the paper groups them) by models (columns)."""

    NAME = "launch"
    BINDINGS = [
        Binding("space", "toggle_pair", "Select"),
        Binding("s", "start", "Queue"),
        # In a text field `s` types a letter: the footer then shows this one (one entry per
        # action, the first active binding wins) and says so.
        Binding("ctrl+s", "start", "Queue (s types in a field)", priority=True),
        Binding("c", "clear", "Clear"),
        Binding("f", "focus_form", "Form"),
        Binding("escape", "focus_matrix", "Back to matrix"),
        Binding("x", "remove_queued", "Unqueue"),
        Binding("left_square_bracket", "family(-1)", "Family", key_display="[ ]"),
        Binding("right_square_bracket", "family(1)", "Next family", show=False),
        Binding("t", "vlm_task", "VLM task"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.groups: list[Group] = groups(self.elapp.catalog)
        self.models: list[dict[str, Any]] = models(self.elapp.catalog)
        self.rows: list[tuple[Group, dict[str, Any]]] = [
            (g, t) for g in self.groups for t in g.techniques
        ]
        self.selected: dict[tuple[str, str], None] = {}
        """Selected (technique, model) pairs in the order picked: the order they queue in."""
        self.memory: tuple[str, int] | None = None
        """(device, bytes of memory) the chosen device has, from its latest sample; None
        until one arrives (then no pair is marked as too big)."""
        self.families: list[str] = list(dict.fromkeys(model_family(c) for c in self.models))
        """Model families (qwen2.5, llama-3.2, ...) in matrix order."""
        self.family: str | None = None
        """The family `space` on the technique column selects in: the one of the model
        column the cursor was last on, or picked with [ and ] there (shown on the info line)."""

    def compose_body(self) -> ComposeResult:
        with Vertical(id="matrix-box"):
            yield DataTable(id="matrix", cursor_type="cell", zebra_stripes=False)
            yield Static(id="pair-info")
        with Vertical(id="form"):
            with Horizontal(classes="form-row"):
                yield Label("device")
                yield Select(
                    [("auto", "auto"), ("cpu", "cpu")],
                    value="auto",
                    allow_blank=False,
                    compact=True,
                    id="device",
                )
                for name, label, default in _INT_FIELDS[:3]:
                    yield Label(label)
                    yield Input(str(default), type="integer", compact=True, id=name)
            with Horizontal(classes="form-row"):
                for name, label, default in _INT_FIELDS[3:]:
                    yield Label(label)
                    yield Input(str(default), type="integer", compact=True, id=name)
                yield Label("params")
                yield Input(placeholder="key=value ...", compact=True, id="params")
            yield Static(id="form-error")
        yield Static(QUEUE_EMPTY, id="queue-empty")
        yield DataTable(id="queue", cursor_type="row", zebra_stripes=False)

    def on_mount(self) -> None:
        table = self.query_one("#matrix", DataTable)
        table.border_title = "techniques × models"
        table.add_column("group", key="group")
        table.add_column("technique", key="technique")
        for card in self.models:
            style = "" if card.get("available") else "dim strike"
            table.add_column(Text(card["id"], style=style), key=card["id"])
        previous = None
        for group, tech in self.rows:
            title = group.title if group is not previous else ""
            previous = group
            label = Text(tech["id"], style="" if tech.get("available") else "dim")
            table.add_row(
                Text(title, style="bold"),
                label,
                *(self._cell(tech, card) for card in self.models),
                key=tech["id"],
            )
        table.fixed_columns = 2  # group and technique stay in view when scrolling right
        table.move_cursor(row=0, column=2)
        queue = self.query_one("#queue", DataTable)
        queue.border_title = "queue (on disk: goes on when you quit)"
        for col_key, col_label in QUEUE_COLUMNS:
            queue.add_column(col_label, key=col_key)
        self.query_one("#queue-empty", Static).border_title = "queue"
        self._draw_queue()

    def queue_changed(self) -> None:
        """The app read a changed queue from disk."""
        self._draw_queue()

    def resumed(self) -> None:
        self._draw_queue()
        history = self.elapp.history
        # Simulated GPUs are no CUDA devices: a run can only go to real ones (or cpu/auto).
        gpus = [
            d
            for d in history.device_names()
            if d.startswith("gpu") and (s := history.latest(d)) is not None and not s.simulated
        ]
        select = self.query_one("#device", Select)
        options = [("auto", "auto"), ("cpu", "cpu")] + [
            (f"cuda:{g[3:]}", f"cuda:{g[3:]}") for g in gpus
        ]
        value = select.value
        select.set_options(options)
        if value in [v for _, v in options]:
            select.value = value
        self._memory_changed()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        matrix = self.query_one("#matrix", DataTable)
        if action == "focus_matrix":  # shown (and active) only away from the matrix
            return not matrix.has_focus
        if action == "family":  # only on the technique column
            return matrix.has_focus and matrix.cursor_coordinate.column < 2
        if action == "vlm_task":  # only on a vision-language column
            return matrix.has_focus and self.vlm_column(self._at_cursor()[1])
        return True

    def action_family(self, delta: int) -> None:
        """Pick the model family `space` on the technique column selects in."""
        at = self.families.index(self.family) if self.family in self.families else 0
        self.family = self.families[(at + delta) % len(self.families)]
        self._explain()

    def samples_arrived(self) -> None:
        """New samples: the chosen device's memory may be known now."""
        if self.memory is None:
            self._memory_changed()

    # ------------------------------------------------------------------ memory

    def _device_memory(self) -> tuple[str, int] | None:
        """The device the form's choice runs on, and its memory from its latest sample."""
        history = self.elapp.history
        value = str(self.query_one("#device", Select).value)
        if value == "auto":  # the runner's auto: the first real GPU, else the host
            gpus = [
                d
                for d in history.device_names()
                if d.startswith("gpu") and (s := history.latest(d)) is not None and not s.simulated
            ]
            value = f"cuda:{gpus[0][3:]}" if gpus else "cpu"
        name = "cpu" if value == "cpu" else f"gpu{value.removeprefix('cuda:')}"
        sample = history.latest(name)
        if sample is None or not sample.mem_total_bytes:
            return None
        return value, sample.mem_total_bytes

    def fit_reason(self, tech: dict[str, Any], card: dict[str, Any]) -> str | None:
        """Why the pair cannot fit the chosen device's memory, or None."""
        if self.memory is None:
            return None
        device, total = self.memory
        return preflight.fit_problem(tech["family"], tech["id"], card, device, total)

    @on(Select.Changed, "#device")
    def _memory_changed(self) -> None:
        memory = self._device_memory()
        if memory == self.memory:
            return
        self.memory = memory
        self._redraw_marks()

    # ------------------------------------------------------------------ matrix

    def _lengths(self) -> tuple[int | None, int | None]:
        return self._int("seq_len"), self._int("new_tokens")

    def _int(self, name: str) -> int | None:
        text = self.query_one(f"#{name}", Input).value.strip()
        try:
            return int(text) if text else None
        except ValueError:
            return None

    def _cell(self, tech: dict[str, Any], card: dict[str, Any]) -> Text:
        if (tech["id"], card["id"]) in self.selected:
            return _SELECTED
        seq_len, new_tokens = self._lengths() if self.is_mounted else (None, None)
        if pair_reason(tech, card, seq_len=seq_len, new_tokens=new_tokens,
                       values=self._vlm(tech, card)):
            return _INVALID
        if self.fit_reason(tech, card):
            return _TOO_BIG
        return _FREE

    def _reason(self, tech: dict[str, Any], card: dict[str, Any]) -> str | None:
        """Why the pair cannot be selected (the runner's rules, then memory), or None."""
        seq_len, new_tokens = self._lengths()
        return pair_reason(
            tech, card, seq_len=seq_len, new_tokens=new_tokens, values=self._vlm(tech, card)
        ) or self.fit_reason(tech, card)

    def family_models(self) -> list[dict[str, Any]]:
        """The models of the chosen family (every model before one is chosen)."""
        if self.family is None:
            return self.models
        return [c for c in self.models if model_family(c) == self.family]

    def _at_cursor(self) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        table = self.query_one("#matrix", DataTable)
        row, col = table.cursor_coordinate
        if row >= len(self.rows):
            return None, None
        tech = self.rows[row][1]
        card = self.models[col - 2] if col >= 2 else None
        return tech, card

    def _refresh_cell(self, tech: dict[str, Any], card: dict[str, Any]) -> None:
        self.query_one("#matrix", DataTable).update_cell(
            tech["id"], card["id"], self._cell(tech, card)
        )

    def action_toggle_pair(self) -> None:
        tech, card = self._at_cursor()
        if tech is None:
            return
        cards = [card] if card is not None else self.family_models()
        valid = [c for c in cards if not self._reason(tech, c)]
        if not valid:
            self._explain()
            self.app.bell()
            return
        keys = [(tech["id"], c["id"]) for c in valid]
        turn_on = any(k not in self.selected for k in keys)
        for key, c in zip(keys, valid, strict=True):
            if turn_on:
                self.selected.setdefault(key, None)
            else:
                self.selected.pop(key, None)
            self._refresh_cell(tech, c)
        self._explain()

    @on(DataTable.CellSelected, "#matrix")
    def _cell_selected(self) -> None:
        self.action_toggle_pair()

    @on(DataTable.CellHighlighted, "#matrix")
    def _explain(self) -> None:
        tech, card = self._at_cursor()
        if card is not None:
            self.family = model_family(card)
        self.refresh_bindings()
        info = self.query_one("#pair-info", Static)
        count = f"[b]{len(self.selected)}[/b] pair(s) selected · "
        if tech is None:
            info.update(count)
            return
        if card is None:
            reason = technique_reason(tech)
            if reason:
                info.update(f"{count}{tech['id']}: [red]{reason}[/]")
                return
            family = self.family_models()
            fit = [c for c in family if not self._reason(tech, c)]
            where = f"the {self.family} family" if self.family is not None else "every model"
            skipped = len(family) - len(fit)
            info.update(
                f"{count}space selects {tech['id']} on {where}: {len(fit)} model(s)"
                + (f", {skipped} skipped (✗ cannot run, ⊘ cannot fit)" if skipped else "")
                + " · [ ] picks the family"
            )
            return
        reason = self._reason(tech, card)
        pair = f"{tech['id']} × {card['id']}"
        info.update(
            count
            + (
                f"{pair}: [red]cannot run: {reason}[/]"
                if reason
                else f"{pair}: {tech.get('description', '')}"
                + (f" ({model_reason(card)})" if model_reason(card) else "")
            )
            + self.vlm_note(tech, card)
        )

    @on(Input.Changed, "#seq_len, #new_tokens")
    def _lengths_changed(self) -> None:
        # A length change can make pairs invalid (positions): redraw the free/invalid marks.
        self._redraw_marks()

    def _redraw_marks(self) -> None:
        """Drop selected pairs that can no longer run and redraw every mark."""
        table = self.query_one("#matrix", DataTable)
        for _, tech in self.rows:
            for card in self.models:
                if self._reason(tech, card):
                    self.selected.pop((tech["id"], card["id"]), None)
                table.update_cell(tech["id"], card["id"], self._cell(tech, card))

    def action_clear(self) -> None:
        pairs = list(self.selected)
        self.selected.clear()
        by_id = {t["id"]: t for _, t in self.rows}
        cards = {c["id"]: c for c in self.models}
        for t, m in pairs:
            self._refresh_cell(by_id[t], cards[m])
        self._explain()

    def action_focus_form(self) -> None:
        self.query_one("#device", Select).focus()

    def action_focus_matrix(self) -> None:
        self.query_one("#matrix", DataTable).focus()

    # ------------------------------------------------------------------ starting

    def build_specs(self) -> list[RunSpec]:
        """Validated specs of the selected pairs, in the order they were selected; BadInput
        (one line) on the first problem."""
        from efficientllm_tui.runs.specs import build_spec

        if not self.selected:
            raise BadInput("select pairs first: space on a cell of the matrix")
        fields: dict[str, Any] = {}
        for name, label, _ in _INT_FIELDS:
            text = self.query_one(f"#{name}", Input).value.strip()
            if not text:
                raise BadInput(f"{label}: give a number")
            try:
                fields[name] = int(text)
            except ValueError:
                raise BadInput(f"{label}: {text!r} is not a whole number") from None
        try:
            params = parse_set(self.query_one("#params", Input).value.split())
        except ProtocolError as e:
            raise BadInput(f"params: {e}") from None
        device = str(self.query_one("#device", Select).value)
        by_id = {t["id"]: t for _, t in self.rows}
        cards = {c["id"]: c for c in self.models}
        specs = []
        for tech_id, model_id in self.selected:
            reason = pair_reason(
                by_id[tech_id],
                cards[model_id],
                seq_len=fields["seq_len"],
                new_tokens=fields["new_tokens"],
                values=self._vlm(by_id[tech_id], cards[model_id]),
            )
            reason = reason or self.fit_reason(by_id[tech_id], cards[model_id])
            if reason:
                raise BadInput(f"{tech_id} × {model_id} cannot run: {reason}")
            try:
                specs.append(
                    build_spec(
                        model=model_id, technique=tech_id, device=device,
                        params={**self._vlm(by_id[tech_id], cards[model_id]), **params},
                        **fields,
                    )
                )
            except BadInput as e:
                raise BadInput(f"{tech_id} × {model_id}: {e}") from None
        return specs

    def action_start(self) -> None:
        error = self.query_one("#form-error", Static)
        try:
            specs = self.build_specs()
        except BadInput as e:
            error.update(f"⚠ {e}")
            error.add_class("-shown")
            return
        error.update("")
        error.remove_class("-shown")
        self.elapp.enqueue_runs(specs)  # all at once; the app says when they are queued
        self.action_clear()


def model_family(card: dict[str, Any]) -> str:
    """A model's family: its card's `family`, else its id without the size
    (qwen2.5-1.5b -> qwen2.5, llama-3.2-1b -> llama-3.2, phi-3.5-mini -> phi-3.5)."""
    return str(card.get("family") or _SIZE_SUFFIX.sub("", card["id"]))


SCREEN = LaunchScreen
