"""Placeholder: benchmark being written (owner: benchmarks helper)."""
