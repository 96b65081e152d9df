"""Sampling backends, the profiling daemon, measurement windows and the metric math.

Imports nothing from the app or the runners, and never textual, duckdb or torch.
"""
