"""jobcast's benchmark suite: ``python -m bench``. See docs/benchmarks.md."""
