"""Launch's queue panel: the runs waiting and running per device as the queue on disk holds
them (what the CLI or another TUI queued too), kept in place as they move, and `x` to take
a waiting run out."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from textual.widgets import DataTable, Static

if TYPE_CHECKING:
    from efficientllm_tui.runs.queue import QueueRow

QUEUE_COLUMNS = (
    ("device", "device"),
    ("state", "state"),
    ("pair", "model × technique"),
    ("progress", "progress"),
    ("run", "run id"),
)


class QueuePanel:
    """Mixed into the Launch screen: its `#queue` table and `#queue-empty` note."""

    def action_remove_queued(self) -> None:
        """Remove the waiting run under the queue's cursor (the first `x` moves there)."""
        screen: Any = self  # a mixin of the Launch screen
        table = screen.query_one("#queue", DataTable)
        rows = {r.run_id: r for r in screen.elapp.queued}
        waiting = [r for r in screen.elapp.queued if r.state == "waiting"]
        if not waiting:
            screen.notify("nothing is waiting in the queue", severity="warning")
            return
        if not table.has_focus:
            table.focus()
            table.move_cursor(row=table.get_row_index(waiting[0].run_id))
            screen.notify("queue: pick a waiting run, then x removes it", title="Remove queued")
            return
        run_id = str(table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value)
        row = rows.get(run_id)
        if row is None:
            screen.notify(f"{run_id} left the queue", severity="warning")
        elif row.state != "waiting":
            screen.notify(
                f"{row.model} × {row.technique} is running: stop it on the Dashboard (1) with x",
                severity="warning",
            )
        else:
            done, what = screen.elapp.cancel_run(run_id)
            screen.notify(
                f"{row.model} × {row.technique} ({run_id}): {what}",
                severity="information" if done else "warning",
            )

    def _draw_queue(self) -> None:
        """Show the queue's rows, updating changed cells in place when the runs are the same."""
        screen: Any = self  # a mixin of the Launch screen
        rows = screen.elapp.queued
        table = screen.query_one("#queue", DataTable)
        table.display = bool(rows)
        screen.query_one("#queue-empty", Static).display = not rows
        keys = [r.run_id for r in rows]
        if [k.value for k in table.rows] == keys:
            for row in rows:
                for (col, _), value, before in zip(
                    QUEUE_COLUMNS, _queue_cells(row), table.get_row(row.run_id), strict=True
                ):
                    if value != before:
                        table.update_cell(row.run_id, col, value, update_width=True)
            return
        at = None
        if table.row_count:
            at = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        table.clear()
        for row in rows:
            table.add_row(*_queue_cells(row), key=row.run_id)
        if at in keys:
            table.move_cursor(row=keys.index(at))


def _queue_cells(row: QueueRow) -> tuple[str, ...]:
    if row.state == "waiting":
        state, progress = f"#{row.position} waiting", "-"
    else:
        state = "▶ running"
        progress = f"{row.phase or 'starting'} {row.steps_done}/{row.total_steps}"
    return (row.device_key, state, f"{row.model} × {row.technique}", progress, row.run_id)
