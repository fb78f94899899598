"""The serving side: FastAPI on ONNX Runtime. Never imports torch."""
