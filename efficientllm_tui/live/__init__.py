"""Live data for the screens: the profiling daemon's stream and the per-device history it fills."""
