"""MobileNetV2-style MNIST sample teacher (see README.md)."""
