"""Benchmark harnesses behind `diga bench` (latency, mIoU, training throughput)."""
