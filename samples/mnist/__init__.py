"""MNIST sample teacher (see README.md)."""
