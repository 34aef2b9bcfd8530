"""PyTorch purifier → deployable artifacts (ONNX, TensorRT engine, manifest)."""
