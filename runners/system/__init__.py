"""The process around a run: its device, the per-device lock, the event log."""
