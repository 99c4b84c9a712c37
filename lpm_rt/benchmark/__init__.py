"""Benchmarks: kernels (GPU timings) and end-to-end streaming."""
