"""Datasets (real layouts and the built-in benchmark), class protocols, transforms, sampling."""
