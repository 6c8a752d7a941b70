"""Benchmarks: each prints a table in which every figure has its reference beside it, measured
in the same run on the same machine. See bench/README.md."""
