"""Benchmark runners. Import nothing heavy here: the app imports `runners.protocol` only."""
