"""The inference server: Open Inference Protocol v2 over an ASGI app (no torch on this path)."""
