"""ganops: fast, exact, twice-differentiable PyTorch ops for GAN training.

Importing ganops never fails because triton, a GPU or the compiled extension is missing; those backends are
then unavailable (``python -m ganops info`` says why).
"""

from ganops import nn  # first: ganops.nn re-exports from ganops.conversion, which imports ganops.nn
from ganops import data, losses, models, recipes
from ganops._backend import BACKENDS, unavailable_reason, use_backend
from ganops.ops.attention import attention
from ganops.ops.gradient_penalty import NonFiniteGradientError, gradient_norm_penalty, gradient_penalty
from ganops.ops.minibatch_discrimination import minibatch_discrimination
from ganops.ops.minibatch_stddev import minibatch_stddev
from ganops.conversion import convert
from ganops.nn.spectral_norm import SpectralNormGroup, remove_spectral_norm, spectral_norm
from ganops.training import LazyRegularizer
from ganops.training_utils import ExponentialMovingAverage, HistoricalAverage, ImagePool, clip_weights_

__version__ = "0.1.0"

__all__ = [
    "BACKENDS",
    "ExponentialMovingAverage",
    "HistoricalAverage",
    "ImagePool",
    "LazyRegularizer",
    "NonFiniteGradientError",
    "SpectralNormGroup",
    "attention",
    "clip_weights_",
    "convert",
    "data",
    "gradient_norm_penalty",
    "gradient_penalty",
    "losses",
    "minibatch_discrimination",
    "minibatch_stddev",
    "models",
    "nn",
    "recipes",
    "remove_spectral_norm",
    "spectral_norm",
    "unavailable_reason",
    "use_backend",
    "__version__",
]
