"""ganops benchmarks: one harness (``harness.py``), one module per op, run by ``python -m ganops bench``."""
