"""efficientllm-tui: the Textual app, the CLI, run launching and the DuckDB store."""
