"""The SQL console's schema tree: tables and views (run_metrics, leaderboard, ...), with
their columns and DuckDB types."""

from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text
from textual.message import Message
from textual.widgets import Tree

from efficientllm_tui.store.console import SchemaTable


class SchemaTree(Tree[str]):
    """Tables first, then views; `enter` on a name puts it in the editor at the cursor."""

    DEFAULT_CSS = """
    SchemaTree { width: 28; border: round $panel-lighten-2; padding: 0; }
    SchemaTree:focus { border: round $accent; }
    """

    @dataclass
    class Picked(Message):
        """A table, view or column name was chosen (to insert into the editor)."""

        name: str

    def __init__(self, **kwargs: object) -> None:
        super().__init__("database", **kwargs)  # type: ignore[arg-type]
        self.show_root = False
        self.guide_depth = 2
        self.border_title = "Tables"

    def show(self, tables: list[SchemaTable]) -> None:
        """Show these tables and views, each folded but the first of each kind."""
        self.clear()
        for kind, heading in (("table", "tables"), ("view", "views")):
            group = self.root.add(Text(heading, style="bold"), expand=True)
            for t in (t for t in tables if t.kind == kind):
                node = group.add(Text(t.name), data=t.name)
                for column, type_ in t.columns:
                    label = Text(column)
                    label.append(" " + _short_type(type_), style="dim")
                    node.add_leaf(label, data=column)

    def on_tree_node_selected(self, event: Tree.NodeSelected[str]) -> None:
        event.stop()
        if event.node.data and not event.node.children:
            self.post_message(self.Picked(event.node.data))

    def key_i(self) -> None:
        """`i` inserts the highlighted table's or column's name (enter folds a table)."""
        node = self.cursor_node
        if node is not None and node.data:
            self.post_message(self.Picked(node.data))


def _short_type(duckdb_type: str) -> str:
    """`TIMESTAMPTZ` for `TIMESTAMP WITH TIME ZONE`; other types as DuckDB names them."""
    return duckdb_type.replace("TIMESTAMP WITH TIME ZONE", "TIMESTAMPTZ")
