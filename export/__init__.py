"""phibox export stage: merged checkpoint -> GGUF / ONNX / embedder -> signed bundle."""
