"""Ways into attncc: the Python builder, the library of named cascades, loading by name or
file, and recognizing attention for comparison with PyTorch."""
