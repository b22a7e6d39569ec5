"""Minimal, faithful re-implementations of other GAN codebases' modules and call patterns, written for the
conversion tests (``tests/test_conversion_codebases.py``) from reading their sources; no code is copied.

* ``biggan_pytorch``: ajbrock/BigGAN-PyTorch ``layers.py`` / ``BigGAN.py``;
* ``studiogan``: POSTECH-CVLab/PyTorch-StudioGAN ``src/utils/ops.py`` / ``src/models/big_resnet.py``;
* ``sagan_pytorch``: heykeetae/Self-Attention-GAN ``sagan_models.py`` / ``spectral.py``.

Each keeps what ``ganops.convert`` must respect: the spectral-norm layers with their buffers, settings and
update order, the attention layers' parameter names and return values, how the models call their blocks,
optimizers built in ``__init__`` (BigGAN-PyTorch) and the state_dict key names. Architectures are shrunk
(widths, resolutions) but keep each codebase's block structure.
"""
