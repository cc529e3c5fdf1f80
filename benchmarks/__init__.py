"""Benchmarks of lczerolens: ``python -m benchmarks.run`` (``make bench``) runs them all in one process.

Each ``bench_*`` module has a ``run() -> dict``; :mod:`benchmarks.run` collects them into one markdown table.
Timings are medians over repeats in one process; no test asserts a time.
"""
