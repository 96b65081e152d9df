"""Execution engines: decode engines, the training step, chunked cross-entropy, compilation."""
