"""The edge runtime: sources, preprocess, backends, postprocess, ZeroMQ publisher (DESIGN §1, §5-6).

Installed as ``proad.edge``. Runs with numpy, OpenCV, pyzmq, pydantic and one backend; it never
imports the training code.
"""
