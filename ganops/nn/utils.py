"""``ganops.nn.utils``: the spectral norm functions in the place ``torch.nn.utils`` users look for them."""

from ganops.nn.spectral_norm import remove_spectral_norm, spectral_norm

__all__ = ["remove_spectral_norm", "spectral_norm"]
