"""``cnnkit export``: a checkpoint as an ONNX model, verified against PyTorch before it is written.

``onnx`` (``export_onnx``), ``verification_images`` (the images it is verified on).
"""
