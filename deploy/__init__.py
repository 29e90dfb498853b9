"""Deploy: benchmark ONNX models on any device; needs no torch."""
