"""Spectral normalization as a drop-in for ``torch.nn.utils.parametrizations.spectral_norm``.

* :func:`spectral_norm` registers a :class:`SpectralNorm` parametrization with torch's own
  ``torch.nn.utils.parametrize`` machinery: same arguments, defaults, RNG draws, 15 initial power iterations,
  ``n_power_iterations`` per training forward, none in eval mode, and the same ``state_dict`` keys
  (``parametrizations.weight.original``, ``parametrizations.weight.0._u``, ``..._v``), so checkpoints load
  both ways. Each forward is one fused op (power iteration, ``sigma``, ``W / sigma``).
* Unlike torch, ``_u`` and ``_v`` are never saved for backward (the op saves its own outputs and the
  buffers are overwritten with ``copy_`` under ``no_grad``), so using a module twice before one backward
  (pytorch #66363), ``retain_graph`` double backward (#55368) and DDP's in-place buffer broadcast (#22095)
  raise no in-place-modification errors; the module also compiles with ``torch.compile(fullgraph=True)``.
* :class:`SpectralNormGroup` computes every ganops-normalised weight of a model in one grouped op per
  (dtype, device, iterations, eps) before each forward of the model.

Other codebases' spectral norms (torch's old hook API, BigGAN-PyTorch's ``SN`` layers) are swapped for this
one by :func:`ganops.convert` (``ganops/conversion.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import _SpectralNorm as _TorchSpectralNorm
from torch.nn.utils.spectral_norm import SpectralNorm as _TorchSpectralNormHook

from ganops import _backend
from ganops.ops.spectral_norm import check_hyperparameters, fused_spectral_norm, fused_spectral_norm_group
from ganops.reference import spectral_norm as reference

INITIAL_POWER_ITERATIONS = 15
_TRANSPOSED_CONVS = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


class SpectralNorm(nn.Module):
    """The parametrization ``weight -> weight / sigma(weight)`` (see :func:`spectral_norm`)."""

    def __init__(
        self,
        weight: Tensor,
        n_power_iterations: int = 1,
        dim: int = 0,
        eps: float = 1e-12,
        *,
        backend: str | None = None,
        vectors: tuple[Tensor, Tensor] | None = None,
    ) -> None:
        super().__init__()
        check_hyperparameters(n_power_iterations, eps, "spectral_norm")
        if isinstance(dim, bool) or not isinstance(dim, int):
            raise TypeError(f"spectral_norm: dim must be an int, got {dim!r}")
        ndim = weight.ndim
        if dim >= ndim or dim < -ndim:
            raise IndexError(f"spectral_norm: dim must be in [-{ndim}, {ndim - 1}] for a weight of shape {tuple(weight.shape)}, got {dim}")
        if backend is not None:
            _backend.requested_backend(backend)
        self.dim = dim if dim >= 0 else dim + ndim
        self.eps = eps
        self.n_power_iterations = n_power_iterations
        self.backend = backend
        # Set by SpectralNormGroup right before the model's forward, consumed by the next forward here.
        self._pending: Tensor | None = None
        if ndim > 1:
            if vectors is None:
                weight_mat = reference.weight_to_matrix(weight.detach(), self.dim)
                u, v = reference.initial_vectors(weight_mat, eps)
                _, u, v, _ = reference.spectral_norm_forward(weight_mat, u, v, INITIAL_POWER_ITERATIONS, eps)
                vectors = (u, v)
            self.register_buffer("_u", vectors[0])
            self.register_buffer("_v", vectors[1])

    def forward(self, weight: Tensor) -> Tensor:
        if weight.ndim == 1:
            return F.normalize(weight, dim=0, eps=self.eps)
        if self._pending is not None:
            pending, self._pending = self._pending, None
            return pending
        weight_mat = reference.weight_to_matrix(weight, self.dim)
        iterations = self.n_power_iterations if self.training else 0
        weight_sn, u, v, _ = fused_spectral_norm(weight_mat, self._u, self._v, iterations, self.eps, backend=self.backend)
        if self.training:
            self.store_vectors(u, v)
        return reference.matrix_to_weight(weight_sn, weight.shape, self.dim)

    @torch.no_grad()
    def store_vectors(self, u: Tensor, v: Tensor) -> None:
        # In place, so that DataParallel replicas and DDP's buffer broadcast see one tensor; safe because
        # no autograd graph ever saves the buffers themselves.
        self._u.copy_(u)
        self._v.copy_(v)

    def right_inverse(self, value: Tensor) -> Tensor:
        return value

    def extra_repr(self) -> str:
        return f"n_power_iterations={self.n_power_iterations}, dim={self.dim}, eps={self.eps}"


def _default_dim(module: nn.Module) -> int:
    return 1 if isinstance(module, _TRANSPOSED_CONVS) else 0


def _check_not_normalised(module: nn.Module, name: str) -> None:
    if parametrize.is_parametrized(module, name):
        for existing in module.parametrizations[name]:
            if isinstance(existing, (SpectralNorm, _TorchSpectralNorm)):
                raise ValueError(
                    f"spectral_norm: parameter {name!r} of {type(module).__name__} is already spectrally normalised "
                    f"by {type(existing).__module__}.{type(existing).__name__}; remove it first or use ganops.convert"
                )
    for hook in module._forward_pre_hooks.values():
        if isinstance(hook, _TorchSpectralNormHook) and hook.name == name:
            raise ValueError(
                f"spectral_norm: parameter {name!r} of {type(module).__name__} is already spectrally normalised by "
                "torch.nn.utils.spectral_norm (old hook API); use ganops.convert to switch it to ganops"
            )


def spectral_norm(
    module: nn.Module,
    name: str = "weight",
    n_power_iterations: int = 1,
    eps: float = 1e-12,
    dim: int | None = None,
    *,
    backend: str | None = None,
) -> nn.Module:
    """Spectrally normalise ``module``'s parameter ``name``; a drop-in for
    ``torch.nn.utils.parametrizations.spectral_norm`` with the same arguments, defaults and state_dict.

    Args:
        module: the layer (Linear, Conv1d/2d/3d, ConvTranspose1d/2d/3d, Embedding, or any module with a
            floating parameter or buffer ``name``).
        name: the parameter to normalise.
        n_power_iterations: power iterations per forward in training mode (>= 1).
        eps: ``normalize(x) = x / max(||x||, eps)``.
        dim: the output dimension; default 1 for ConvTranspose, else 0.
        backend: ``"reference"``, ``"triton"``, ``"cpp"`` or ``"auto"`` for the fused op; ``None`` defers
            to :func:`ganops.use_backend` and ``GANOPS_BACKEND``.

    Returns:
        ``module``, with a :class:`SpectralNorm` parametrization registered on ``name``.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"spectral_norm: module must be a torch.nn.Module, got {type(module).__name__}")
    weight = getattr(module, name, None)
    if not isinstance(weight, Tensor):
        raise ValueError(f"spectral_norm: module {type(module).__name__} has no parameter or buffer named name={name!r}")
    if not weight.dtype.is_floating_point:
        raise TypeError(f"spectral_norm: the weight {name!r} must be floating point, got {weight.dtype}")
    check_hyperparameters(n_power_iterations, eps, "spectral_norm")
    _check_not_normalised(module, name)
    if dim is None:
        dim = _default_dim(module)
    parametrize.register_parametrization(
        module, name, SpectralNorm(weight, n_power_iterations, dim, eps, backend=backend)
    )
    return module


def _ganops_parametrization(module: nn.Module, name: str) -> SpectralNorm | None:
    if not parametrize.is_parametrized(module, name):
        return None
    return next((p for p in module.parametrizations[name] if isinstance(p, SpectralNorm)), None)


def remove_spectral_norm(module: nn.Module, name: str = "weight") -> nn.Module:
    """Remove ganops's spectral norm from ``module.name``, leaving the normalised weight as a plain parameter
    (like ``torch.nn.utils.parametrize.remove_parametrizations(module, name)``; in training mode this runs
    one more power iteration, as torch does)."""
    if _ganops_parametrization(module, name) is None:
        raise ValueError(f"remove_spectral_norm: parameter name={name!r} of {type(module).__name__} has no ganops spectral norm")
    parametrize.remove_parametrizations(module, name, leave_parametrized=True)
    return module


class SpectralNormGroup:
    """Computes every ganops spectral norm of ``model`` in a few grouped launches per forward of ``model``.

    A forward pre-hook on ``model`` runs one grouped op per (dtype, device, iterations, eps) over all layers
    whose only parametrization is ganops's spectral norm, updates their ``_u``/``_v`` (training mode) and
    hands each layer its ``W / sigma``; the grouped op's backward computes every layer's gradient in one call
    too (two kernel launches on the GPU backends). A forward hook drops results a layer did not use, also when
    the forward raises (``always_call=True``): a precomputed weight never outlives the forward it was made for.
    Train/eval mode is read per layer.
    Every layer is updated once per forward of ``model``, whether or not the forward uses it.

    >>> group = ganops.SpectralNormGroup(discriminator)
    >>> ...train as usual...
    >>> group.remove()
    """

    def __init__(self, model: nn.Module, *, backend: str | None = None) -> None:
        if backend is not None:
            _backend.requested_backend(backend)
        self.backend = backend
        self.layers: list[tuple[nn.Module, str, SpectralNorm]] = []
        for module in model.modules():
            for name, plist in getattr(module, "parametrizations", {}).items():
                if len(plist) == 1 and isinstance(plist[0], SpectralNorm) and plist.original.ndim > 1:
                    self.layers.append((module, name, plist[0]))
        if not self.layers:
            raise ValueError(f"SpectralNormGroup: model {type(model).__name__} has no ganops spectral norm to group")
        self._handles = [
            model.register_forward_pre_hook(self._before_forward),
            model.register_forward_hook(self._after_forward, always_call=True),
        ]

    def update(self) -> None:
        """Compute all layers now (what the pre-hook does)."""
        buckets: dict[tuple, list[int]] = {}
        for index, (_, _, sn) in enumerate(self.layers):
            iterations = sn.n_power_iterations if sn.training else 0
            buckets.setdefault((iterations, sn.eps), []).append(index)
        for (iterations, eps), indices in buckets.items():
            originals = [self.layers[i][0].parametrizations[self.layers[i][1]].original for i in indices]
            norms = [self.layers[i][2] for i in indices]
            mats = [reference.weight_to_matrix(w, sn.dim) for w, sn in zip(originals, norms)]
            weight_sns, us, vs, _ = fused_spectral_norm_group(
                mats, [sn._u for sn in norms], [sn._v for sn in norms], iterations, eps, backend=self.backend
            )
            for sn, weight, weight_sn, u, v in zip(norms, originals, weight_sns, us, vs):
                if sn.training:
                    sn.store_vectors(u, v)
                sn._pending = reference.matrix_to_weight(weight_sn, weight.shape, sn.dim)

    def clear(self) -> None:
        for _, _, sn in self.layers:
            sn._pending = None

    def _before_forward(self, model, args) -> None:
        try:
            self.update()
        except BaseException:
            self.clear()
            raise

    def _after_forward(self, model, args, output) -> None:
        self.clear()

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self.clear()
