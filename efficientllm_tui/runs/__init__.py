"""Runs on the app side: run dirs, the on-disk queue and its dispatcher, ingest, sweeps."""
