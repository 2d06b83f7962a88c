"""Benchmarks (`make bench`): each `bench/bench_*.py` module has `main(argv) -> dict` and prints its figures."""
