"""awdlm: AWD-LSTM language models on current PyTorch."""

__version__ = "0.1.0"
