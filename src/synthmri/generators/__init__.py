"""Generators: networks, training loops, sampling and the MLflow sampler."""
