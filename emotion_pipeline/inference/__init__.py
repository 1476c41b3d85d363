"""Using a trained model: loading it (adapter merged, export, int8 ONNX) and the class bias it carries."""
