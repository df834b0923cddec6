"""The paper's experiments, one module each, driven by the thin programs in binaries/."""
