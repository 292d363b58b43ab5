"""Metrics: memorization, synthetic-image quality, 3D segmentation scores."""
