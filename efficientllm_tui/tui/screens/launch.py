"""Launch: pick model x technique pairs from a matrix, set parameters, start or queue them."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import DataTable, Input, Label, Select, Static

from efficientllm_tui.errors import BadInput
from efficientllm_tui.tui.matrix import (
    Group,
    groups,
    model_reason,
    models,
    pair_reason,
    technique_reason,
)
from efficientllm_tui.tui.screens.base import AppScreen
from runners.protocol import ProtocolError, RunSpec, parse_set

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


class LaunchScreen(AppScreen):
    """A matrix of techniques (rows, grouped as the paper groups them) by models (columns)."""

    NAME = "launch"
    BINDINGS = [
        Binding("space", "toggle_pair", "Toggle pair"),
        Binding("s", "start", "Start"),
        Binding("ctrl+s", "start", "Start", show=False, priority=True),
        Binding("c", "clear", "Clear"),
        Binding("f", "focus_form", "Form"),
        Binding("escape", "focus_matrix", "Matrix", show=False),
        Binding("x", "drop_queue", "Drop queued"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.groups: list[Group] = groups(self.elapp.catalog)
        self.models: list[dict[str, Any]] = models(self.elapp.catalog)
        self.rows: list[tuple[Group, dict[str, Any]]] = [
            (g, t) for g in self.groups for t in g.techniques
        ]
        self.selected: set[tuple[str, str]] = set()
        self._queue_drawn = False

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
        yield Static(id="queue")

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
        table.move_cursor(row=0, column=2)
        self.set_interval(0.5, self._draw_queue)
        self._draw_queue()

    def resumed(self) -> None:
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
        if pair_reason(tech, card, seq_len=seq_len, new_tokens=new_tokens):
            return _INVALID
        return _FREE

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
        cards = [card] if card is not None else self.models
        seq_len, new_tokens = self._lengths()
        valid = [
            c for c in cards if not pair_reason(tech, c, seq_len=seq_len, new_tokens=new_tokens)
        ]
        if not valid:
            self._explain()
            self.app.bell()
            return
        keys = [(tech["id"], c["id"]) for c in valid]
        turn_on = any(k not in self.selected for k in keys)
        for key, c in zip(keys, valid, strict=True):
            (self.selected.add if turn_on else self.selected.discard)(key)
            self._refresh_cell(tech, c)
        self._explain()

    @on(DataTable.CellSelected, "#matrix")
    def _cell_selected(self) -> None:
        self.action_toggle_pair()

    @on(DataTable.CellHighlighted, "#matrix")
    def _explain(self) -> None:
        tech, card = self._at_cursor()
        info = self.query_one("#pair-info", Static)
        count = f"[b]{len(self.selected)}[/b] pair(s) selected · "
        if tech is None:
            info.update(count)
            return
        about = f"{tech['id']}: {tech.get('description', '')}"
        if card is None:
            reason = technique_reason(tech)
            info.update(
                count
                + about
                + (f" — [red]{reason}[/]" if reason else " — space selects every valid model")
            )
            return
        seq_len, new_tokens = self._lengths()
        reason = pair_reason(tech, card, seq_len=seq_len, new_tokens=new_tokens)
        pair = f"{tech['id']} × {card['id']}"
        info.update(
            count
            + (
                f"{pair}: [red]cannot run: {reason}[/]"
                if reason
                else f"{pair}: {tech.get('description', '')}"
                + (f" ({model_reason(card)})" if model_reason(card) else "")
            )
        )

    @on(Input.Changed, "#seq_len, #new_tokens")
    def _lengths_changed(self) -> None:
        # A length change can make pairs invalid (positions): redraw the free/invalid marks.
        table = self.query_one("#matrix", DataTable)
        seq_len, new_tokens = self._lengths()
        for _, tech in self.rows:
            for card in self.models:
                if pair_reason(tech, card, seq_len=seq_len, new_tokens=new_tokens):
                    self.selected.discard((tech["id"], card["id"]))
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
        """Validated specs of the selected pairs; BadInput (one line) on the first problem."""
        from efficientllm_tui.runs.launch import build_spec

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
        for tech_id, model_id in sorted(self.selected):
            reason = pair_reason(
                by_id[tech_id],
                cards[model_id],
                seq_len=fields["seq_len"],
                new_tokens=fields["new_tokens"],
            )
            if reason:
                raise BadInput(f"{tech_id} × {model_id} cannot run: {reason}")
            try:
                specs.append(
                    build_spec(
                        model=model_id, technique=tech_id, device=device, params=params, **fields
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
        started, queued = self.elapp.submit_runs(specs)
        self.notify(
            f"started {started}, queued {queued}; watch them on the Dashboard (1)", title="Launch"
        )
        self.action_clear()
        self._draw_queue()

    def action_drop_queue(self) -> None:
        n = self.elapp.queue.cancel_pending()
        self.notify(f"dropped {n} queued run(s)" if n else "nothing is queued")
        self._draw_queue()

    def _draw_queue(self) -> None:
        if not self.is_current and self._queue_drawn:
            return
        self._queue_drawn = True
        app = self.elapp
        lines = []
        for key, q in sorted(app.queue.devices.items()):
            running = app.active.get(q.running or "")
            now = "idle"
            if q.running:
                now = f"▶ {q.running}"
                if running is not None:
                    prog = running.progress
                    now = f"▶ {running.model} × {running.technique} {running.phase}" + (
                        f" {prog:.0%}" if prog is not None else ""
                    )
            waiting = ", ".join(f"{s.model} × {s.technique}" for s in q.pending)
            lines.append(f"[b]{key}[/b]  {now}" + (f"  · queued: {waiting}" if waiting else ""))
        others = [r for r in app.active.values() if not r.launched_here]
        if others:
            lines.append(
                "also running (started elsewhere): "
                + ", ".join(f"{r.model} × {r.technique} on {r.device}" for r in others)
            )
        text = "\n".join(lines) or (
            "Nothing queued. One run per device at a time: pairs on a "
            "busy device wait here and start when it is free."
        )
        self.query_one("#queue", Static).update(text)


SCREEN = LaunchScreen
