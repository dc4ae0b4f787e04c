"""Latency measurement: on this machine now, on the device through its backend's runner later."""
