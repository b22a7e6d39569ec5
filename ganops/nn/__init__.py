"""``torch.nn`` modules around ganops ops: the self-attention block, the minibatch-stddev layer, the
spectral-norm parametrization, ProGAN's pixel norm and Salimans' virtual batch norm (``ganops.nn.utils`` has the
spectral norm and equalised learning rate functions, as ``torch.nn.utils`` does)."""

from ganops.nn import utils
from ganops.nn.attention import SelfAttention2d, self_attention_2d
from ganops.nn.minibatch_discrimination import MinibatchDiscrimination
from ganops.nn.minibatch_stddev import MinibatchStdDev
from ganops.nn.pixel_norm import PixelNorm, pixel_norm
from ganops.nn.virtual_batch_norm import VirtualBatchNorm2d, WithReferenceBatch
from ganops.nn.spectral_norm import SpectralNorm, SpectralNormGroup
from ganops.conversion import convert_state_dict

__all__ = [
    "MinibatchDiscrimination",
    "MinibatchStdDev",
    "PixelNorm",
    "SelfAttention2d",
    "SpectralNorm",
    "SpectralNormGroup",
    "VirtualBatchNorm2d",
    "WithReferenceBatch",
    "convert_state_dict",
    "pixel_norm",
    "self_attention_2d",
    "utils",
]
