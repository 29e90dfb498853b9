"""Export: nn.Module -> checked ONNX file with parity against torch and metadata."""

