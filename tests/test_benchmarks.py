"""Placeholder: benchmark smoke tests (owner: benchmarks helper)."""
