"""Export of trained Pro-AD models: ONNX graphs and TensorRT engines (DESIGN §3-4).

Installed as ``proad.export``. May import ``proad`` and ``proad.kernels``; the edge runtime never
imports it.
"""
