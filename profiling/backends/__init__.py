"""Sampling backends (NVML + GPM, host, simulated), energy readers and GPU process lists."""
