"""Performance benchmarks: ``python -m benchmarks.run`` (CPU or GPU), ``python -m benchmarks.gpu`` (one GPU,
under 8 minutes), ``python -m benchmarks.search_scale`` (FAISS at 100K-1M). Results: BENCHMARKS.md."""
