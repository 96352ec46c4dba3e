"""stmap.export: ONNX export with verified parity, TensorRT engines."""
