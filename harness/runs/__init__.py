"""Runs: run configs and sweep specs, the pipeline ``run(spec) -> RunRecord``, typed records on disk, the
results file, the memory budget and the regression gate.
"""
