"""Helpers every layer may use: model and image checks, atomic files, cache keys, the CPU
allocator. Nothing here imports from another curvext subpackage."""
