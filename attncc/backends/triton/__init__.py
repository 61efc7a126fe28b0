"""The Triton backend: kernels for NVIDIA GPUs, and what their compiled code costs."""
