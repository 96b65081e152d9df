"""Benchmark families, one module each (and its config): what a run of a family measures."""
