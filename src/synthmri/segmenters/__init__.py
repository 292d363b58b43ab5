"""Segmenters: networks, training loop and 3D evaluation."""
