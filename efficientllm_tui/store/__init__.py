"""The DuckDB store: db (the one duckdb importer), schema, reads, bundles, SQL console."""
