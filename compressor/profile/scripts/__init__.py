"""Self-contained programs copied to a device and run there (standard library, numpy and the runtime only)."""
