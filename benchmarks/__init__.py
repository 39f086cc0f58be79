"""Installed as diffalign.benchmarks (DESIGN.md §2)."""
