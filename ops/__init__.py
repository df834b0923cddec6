"""XLA-compiled kernels of ntk_tf (the only place `jit_compile=True` is used)."""
