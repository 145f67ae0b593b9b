"""Stand-ins for libraries and tools that cannot run on a CPU-only machine (torch_npu)."""
