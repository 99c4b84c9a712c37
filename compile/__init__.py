"""Ahead-of-time pipeline (imported as `lpm_compile`)."""
