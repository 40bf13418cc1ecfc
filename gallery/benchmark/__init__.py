"""Comparing embedders on labelled data: datasets and protocols, embedding, metrics report and plots."""
from gallery.benchmark.run import BenchmarkConfig, BenchmarkReport, run_benchmark

__all__ = ["BenchmarkConfig", "BenchmarkReport", "run_benchmark"]
