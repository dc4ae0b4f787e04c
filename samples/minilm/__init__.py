"""MiniLM-L6 sample: a real pretrained sentence encoder and real English sentences (see README.md)."""
