"""proad-edge: the Pro-AD anomaly detector (this package) and, mapped under the same namespace,
``proad.kernels`` (fused attention), ``proad.export`` (ONNX, TensorRT) and ``proad.edge`` (the
camera daemon). Importing ``proad`` imports nothing heavy: the edge runtime depends on it without
torch."""
