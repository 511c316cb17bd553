"""Serving on Triton Inference Server (being built)."""
