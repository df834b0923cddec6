"""XLA-compiled block operations; the only place ntk_tf uses `jit_compile=True`."""
