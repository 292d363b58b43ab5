"""synthmri: can synthetic brain-tumour MR images stand in for real patients?"""

__version__ = "0.1.0"
