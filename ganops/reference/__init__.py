"""Plain-PyTorch reference implementations: the specification of every op."""
