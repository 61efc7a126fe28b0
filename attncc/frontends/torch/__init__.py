"""PyTorch frontends: the torch.compile backend (FX) and the torch-mlir importer."""
