"""Command-line entry point of the toolkit (``moe-denoise``)."""
__version__ = "0.1.0"
