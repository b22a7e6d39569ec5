"""``torch.nn`` modules around ganops ops: the self-attention block, the minibatch-stddev layer and the
spectral-norm parametrization (``ganops.nn.utils`` has the spectral norm functions, as ``torch.nn.utils`` does)."""

from ganops.nn import utils
from ganops.nn.attention import SelfAttention2d, self_attention_2d
from ganops.nn.minibatch_stddev import MinibatchStdDev
from ganops.nn.spectral_norm import SpectralNorm, SpectralNormGroup
from ganops.conversion import convert_state_dict

__all__ = [
    "MinibatchStdDev",
    "SelfAttention2d",
    "SpectralNorm",
    "SpectralNormGroup",
    "convert_state_dict",
    "self_attention_2d",
    "utils",
]
