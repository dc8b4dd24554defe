"""gRPC serving of a model repository (ONNX Runtime + FAISS). Never imports torch or transformers."""
