"""Models: the card and file format, networks, torch and ONNX Runtime backends, the machine, the model cache."""
