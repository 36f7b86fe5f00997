"""mnisttk: train, quantize, export and verify a small MNIST CNN for edge deployment."""

__version__ = "0.1.0"
