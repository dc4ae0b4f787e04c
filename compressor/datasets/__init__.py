"""Small bundled datasets used by samples and tests."""
