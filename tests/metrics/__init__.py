"""Tests of the segmentation metrics."""
