"""Bundled sample models."""
