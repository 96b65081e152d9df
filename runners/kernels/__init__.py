"""Own GPU kernels (Triton), each kept only where no maintained library fits."""
