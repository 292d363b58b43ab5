"""Data stage: phantom subjects, BraTS slicing, the slice store."""
