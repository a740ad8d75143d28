"""Benchmarks of rnnjax against peer RNN implementations (``python -m benchmarks.run``)."""
