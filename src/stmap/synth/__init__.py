"""Synthetic post-earthquake cities (in progress)."""
