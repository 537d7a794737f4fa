"""Benchmarks of rlhfv_nb against the tools users would otherwise pick (see `bench/README.md`)."""
