"""llmrec: train CLLM4Rec and TCF, export them to ONNX + FAISS, serve them over gRPC."""

__version__ = "0.1.0"
