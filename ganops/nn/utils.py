"""``ganops.nn.utils``: the spectral norm and equalised learning rate functions in the place ``torch.nn.utils`` users look for them."""

from ganops.nn.equalized_lr import equalized_lr, remove_equalized_lr
from ganops.nn.spectral_norm import remove_spectral_norm, spectral_norm

__all__ = ["equalized_lr", "remove_equalized_lr", "remove_spectral_norm", "spectral_norm"]
