"""Experiments over allocators: the compare loop, its report and every figure."""
