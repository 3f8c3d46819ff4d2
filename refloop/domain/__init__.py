"""The loop's rules: pure, deterministic, no I/O and no Temporal imports."""
