"""Benchmarks (figures, never pass/fail timing): memory of one update vs n_t, sandbox throughput, learning.
"""
