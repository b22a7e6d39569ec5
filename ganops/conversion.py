"""``ganops.convert``: swap ganops's ops into a model built by another codebase, keeping its numbers and state.

Design: the model's own module objects stay; only what they compute changes.

* A layer of a known kind keeps its identity and gets, in place, a class made for it: a subclass of its own
  class (so the codebase's ``isinstance`` checks, e.g. StudioGAN's ``isinstance(block, ops.SelfAttention)``,
  still hold) whose one overridden method runs ganops's fused ops. Parameters and buffers are untouched: the
  same ``Parameter`` objects (optimizers built before ``convert``, EMA copies and DDP buckets keep working),
  the codebase's own settings read from the layer (BigGAN's ``eps``/``num_itrs``/``num_svs``, the hook API's
  ``eps=1e-6`` in StudioGAN, SAGAN's ``power_iterations``) and its own ``state_dict`` layout, so checkpoints
  load strictly both ways with no key mapping. ``revert=True`` restores the original classes.
* Overridden methods, per kind (the code around them is the codebase's own):

  ======================================  ==================================  ==============================
  kind                                    overridden                          state (unchanged)
  ======================================  ==================================  ==============================
  BigGAN-PyTorch ``SN`` layers            ``W_()``                            ``weight, u0.., sv0..``
  (``SNConv2d``, ``SNLinear``,
  ``SNEmbedding``)
  torch's old hook API                    the hook object's                   ``weight_orig, weight_u,
  (``torch.nn.utils.spectral_norm``,      ``compute_weight``                  weight_v``
  StudioGAN's ``snconv2d`` & co.)
  SAGAN-PyTorch's ``SpectralNorm``        ``_update_u_v()``                   ``module.weight_u/_v/_bar``
  wrapper
  torch's parametrization                 replaced by :class:`SpectralNorm`   ``parametrizations.weight..``
  attention (``attention_layers``)        ``forward`` (same signature and     the layer's own
                                          return structure)
  ======================================  ==================================  ==============================

* Update order: the three codebases update ``v`` from ``u`` first, then ``u`` (torch's parametrization and
  ganops: ``u`` first). A ``v``-first iteration on ``W`` is exactly a ``u``-first iteration on ``W^T`` with the
  roles of the vectors swapped, and ``sigma = v^T W^T u = u^T W v``, so the converted layers call the fused op on
  the transposed view and follow the codebase's order exactly: training after conversion matches the
  original step for step. BigGAN-PyTorch's eval mode (one unstored iteration from ``u``) is one iteration
  of the op, not stored. Its extra singular values (``num_svs > 1``, logged in ``sv1..``) run its
  Gram-Schmidt iteration in plain torch after the fused op, one iteration at a time.
* SAGAN-PyTorch's gradient: its ``sigma = u . (W v)`` saves the ``weight_u``/``weight_v`` Parameters, whose
  ``.data`` each call replaces, so a backward after several calls (D on reals and on fakes, one backward)
  uses the latest call's vectors for every call. The converted wrapper takes ``W / sigma`` from the fused op
  and that same gradient (:class:`_LiveVectorsNormalisedWeight`); with each call's own vectors instead, one
  D step of its trainer differs by ~5e-4 relative.
* Measured differences (float64, ``tests/test_conversion_codebases.py``): SAGAN-PyTorch normalises by
  ``||x|| + 1e-12`` where ganops divides by ``max(||x||, 1e-12)``, a relative difference of ``1e-12 / ||x||``
  per step (~1e-11 on its outputs, ~1e-10 after 3 training steps); everything else is rounding (~1e-15).
* Attention: a layer of a mapped class runs :func:`ganops.nn.self_attention_2d` on the normalised weights
  of its own sub-layers (each sub-layer's spectral norm updates as in the original, with its settings).
  SAGAN-PyTorch's ``Self_Attn`` returns ``(out, attention)``: the fused op never holds the ``N x N`` map, so
  the converted layer computes it separately, as the original does (O(N^2) memory, differentiable), unless
  ``return_attention_maps=False``, which returns ``None`` in its place.
* Converted classes are made once per original class; pickling a converted module (``torch.save(model)``)
  records the original class and rebuilds the converted one on load.
* :class:`ganops.SpectralNormGroup` groups ganops's parametrization only; converted codebase layers run one
  fused op per layer.

:func:`replace_attention_layers` and :func:`convert_state_dict` instead build :class:`SelfAttention2d` modules
with ganops's parameter layout from a codebase's attention layers.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import _SpectralNorm as _TorchSpectralNorm
from torch.nn.utils.spectral_norm import SpectralNorm as _TorchSpectralNormHook

from ganops import _backend
from ganops.nn.attention import SelfAttention2d, self_attention_2d
from ganops.nn.spectral_norm import SpectralNorm
from ganops.ops.spectral_norm import fused_spectral_norm
from ganops.reference import spectral_norm as reference

logger = logging.getLogger(__name__)

# SAGAN-PyTorch's l2normalize: x / (||x|| + 1e-12).
_SAGAN_EPS = 1e-12


# ---------------------------------------------------------------- converted classes


_CONVERTED_CLASSES: dict[tuple[type, type], type] = {}


def _converted_class(original: type, mixin: type) -> type:
    """The subclass of ``original`` whose methods ``mixin`` overrides (one per pair, so ``type(a) is type(b)``
    holds between converted layers of one class)."""
    key = (original, mixin)
    if key not in _CONVERTED_CLASSES:
        _CONVERTED_CLASSES[key] = type(
            original.__name__,
            (mixin, original),
            {"_ganops_original_class": original, "_ganops_mixin": mixin, "__module__": original.__module__},
        )
    return _CONVERTED_CLASSES[key]


def _new_converted(original: type, mixin: type) -> nn.Module:
    """Unpickling: an empty instance of the converted class (its state follows)."""
    return object.__new__(_converted_class(original, mixin))


class _Converted:
    """Shared by every converted class: pickles as (original class, mixin), shows the conversion in repr."""

    _ganops_original_class: type
    _ganops_mixin: type
    _ganops_backend: str | None

    def __reduce_ex__(self, protocol):
        reduced = object.__reduce_ex__(self, max(protocol, 2))
        return (_new_converted, (self._ganops_original_class, self._ganops_mixin), *reduced[2:])

    def extra_repr(self) -> str:
        original = super().extra_repr()
        return f"{original}, ganops" if original else "ganops"


def _swap_in(module: nn.Module, mixin: type, backend: str | None, **attributes) -> None:
    module.__class__ = _converted_class(type(module), mixin)
    module._ganops_backend = backend
    for name, value in attributes.items():
        setattr(module, name, value)


def _is_converted(module: object) -> bool:
    return isinstance(module, _Converted)


def _swap_out(module: nn.Module) -> None:
    module.__class__ = module._ganops_original_class
    for name in [name for name in vars(module) if name.startswith("_ganops_")]:
        delattr(module, name)


def _v_first(weight_mat: Tensor, u: Tensor, v: Tensor, iterations: int, eps: float, backend: str | None):
    """``iterations`` power iterations in the order v <- normalize(W^T u), u <- normalize(W v), then ``W / sigma``
    with ``sigma = u^T W v``: ganops's u-first op on ``W^T`` (see the module docstring).
    Returns ``(W_sn, u, v, sigma)``."""
    weight_sn_t, v_new, u_new, sigma = fused_spectral_norm(weight_mat.t(), v, u, iterations, eps, backend=backend)
    return weight_sn_t.t(), u_new, v_new, sigma


# ---------------------------------------------------------------- BigGAN-PyTorch SN layers


def _is_biggan_sn(module: nn.Module) -> bool:
    # Never getattr(module, "weight"): on a parametrized module that would run (and update) its parametrization.
    return (
        callable(getattr(type(module), "W_", None))
        and all(attr in vars(module) for attr in ("num_svs", "num_itrs", "eps"))
        and all(buffer in module._buffers for buffer in ("u0", "sv0"))
    )


def _gram_schmidt_step(weight_mat: Tensor, u: Tensor, found_us: list[Tensor], found_vs: list[Tensor], eps: float):
    """BigGAN-PyTorch's power-iteration step for a singular vector after the first: ``v`` and ``u`` made
    orthogonal to the earlier ones before normalising (row vectors ``[1, n]``)."""

    def orthogonalise(x: Tensor, earlier: list[Tensor]) -> Tensor:
        for y in earlier:
            x = x - (x @ y.t()) * y / (y @ y.t())
        return x

    v = F.normalize(orthogonalise(u @ weight_mat, found_vs), eps=eps)
    u = F.normalize(orthogonalise(v @ weight_mat.t(), found_us), eps=eps)
    return u, v


class _BigGANSNLayer(_Converted):
    """BigGAN-PyTorch's ``SN`` mixin with ``W_`` on ganops's fused op (v first, as BigGAN)."""

    def W_(self) -> Tensor:  # noqa: N802 - BigGAN-PyTorch's name, called by its layers' forward
        weight_mat = self.weight.view(self.weight.size(0), -1)
        if self.transpose:
            weight_mat = weight_mat.t()
        vectors = [getattr(self, f"u{index}") for index in range(self.num_svs)]
        values = [getattr(self, f"sv{index}") for index in range(self.num_svs)]
        placeholder_v = weight_mat.new_zeros(weight_mat.shape[1])  # overwritten by the first half-iteration
        if self.num_svs == 1:
            # Eval mode runs its iterations from the same stored u: one iteration, not stored.
            iterations = self.num_itrs if self.training else 1
            weight_sn, u, _, sigma = _v_first(weight_mat, vectors[0][0], placeholder_v, iterations, self.eps, self._ganops_backend)
            if self.training:
                with torch.no_grad():
                    vectors[0][0].copy_(u)
                    values[0].copy_(sigma)
        else:
            for _ in range(self.num_itrs):
                weight_sn, u, v, sigma = _v_first(weight_mat, vectors[0][0], placeholder_v, 1, self.eps, self._ganops_backend)
                found_us, found_vs, sigmas = [u[None]], [v[None]], [sigma]
                with torch.no_grad():
                    for stored in vectors[1:]:
                        u_i, v_i = _gram_schmidt_step(weight_mat.detach(), stored, found_us, found_vs, self.eps)
                        found_us.append(u_i)
                        found_vs.append(v_i)
                        sigmas.append((v_i @ weight_mat.detach().t() @ u_i.t()).squeeze())
                    if self.training:
                        for stored, u_i in zip(vectors, found_us):
                            stored.copy_(u_i)
            if self.training:
                with torch.no_grad():
                    for stored, value in zip(values, sigmas):
                        stored.copy_(value)
        if self.transpose:
            weight_sn = weight_sn.t()
        return weight_sn.reshape(self.weight.shape)


# ---------------------------------------------------------------- torch's old hook API


class _GanopsHookSpectralNorm(_TorchSpectralNormHook):
    """torch's hook object (``torch.nn.utils.spectral_norm``) with ``compute_weight`` on ganops's fused op; the
    same object stays registered, with its state_dict hooks (class swapped in place)."""

    _ganops_backend: str | None

    def compute_weight(self, module: nn.Module, do_power_iteration: bool) -> Tensor:
        weight = getattr(module, self.name + "_orig")
        u = getattr(module, self.name + "_u")
        v = getattr(module, self.name + "_v")
        iterations = self.n_power_iterations if do_power_iteration else 0
        weight_mat = reference.weight_to_matrix(weight, self.dim)
        weight_sn, u_new, v_new, _ = _v_first(weight_mat, u, v, iterations, self.eps, self._ganops_backend)
        if do_power_iteration:
            with torch.no_grad():
                u.copy_(u_new)
                v.copy_(v_new)
        return reference.matrix_to_weight(weight_sn, weight.shape, self.dim)


def _hook_spectral_norms(module: nn.Module) -> list[_TorchSpectralNormHook]:
    return [hook for hook in module._forward_pre_hooks.values() if isinstance(hook, _TorchSpectralNormHook)]


# ---------------------------------------------------------------- SAGAN-PyTorch's SpectralNorm wrapper


def _is_sagan_sn(module: nn.Module) -> bool:
    return (
        all(hasattr(type(module), method) for method in ("_update_u_v", "_made_params", "_make_params"))
        and isinstance(getattr(module, "module", None), nn.Module)
        and hasattr(module, "power_iterations")
    )


class _LiveVectorsNormalisedWeight(torch.autograd.Function):
    """``W / sigma`` with the value from the fused op and SAGAN-PyTorch's gradient: its ``sigma = u . (W v)``
    saves the ``u``/``v`` Parameters themselves, whose ``.data`` every later call replaces, so a backward
    after several calls uses the vectors of the latest call (``grad_W = G / sigma - <G, W> / sigma^2 u v^T`` with
    ``sigma`` from the forward, ``u``, ``v`` read when the backward runs)."""

    @staticmethod
    def forward(ctx, weight_mat: Tensor, weight_sn: Tensor, sigma: Tensor, u: Tensor, v: Tensor) -> Tensor:
        ctx.save_for_backward(weight_mat, sigma)
        ctx.vectors = (u, v)
        return weight_sn

    @staticmethod
    def backward(ctx, grad: Tensor):
        weight_mat, sigma = ctx.saved_tensors
        # .data: the live values, outside autograd's version checks (as SAGAN's .data assignment is).
        u, v = (vector.data for vector in ctx.vectors)
        # sigma's value from the forward, its derivative u v^T (matters only for double backward).
        live_sigma = torch.dot(u, torch.mv(weight_mat, v))
        sigma = sigma.to(weight_mat.dtype) + (live_sigma - live_sigma.detach())
        grad_weight = grad / sigma - ((grad * weight_mat).sum() / sigma**2) * torch.outer(u, v)
        return grad_weight, None, None, None, None


class _SaganSNWrapper(_Converted):
    """SAGAN-PyTorch's ``SpectralNorm(module)`` with ``_update_u_v`` on ganops's fused op (v first, as SAGAN;
    every call, in training and eval mode, as SAGAN; its gradient, see :class:`_LiveVectorsNormalisedWeight`)."""

    def _update_u_v(self) -> None:
        u = getattr(self.module, self.name + "_u")
        v = getattr(self.module, self.name + "_v")
        weight = getattr(self.module, self.name + "_bar")
        weight_mat = weight.view(weight.shape[0], -1)
        with torch.no_grad():
            weight_sn, u_new, v_new, sigma = _v_first(
                weight_mat, u, v, self.power_iterations, _SAGAN_EPS, self._ganops_backend
            )
            u.copy_(u_new)
            v.copy_(v_new)
        weight_sn = _LiveVectorsNormalisedWeight.apply(weight_mat, weight_sn, sigma, u, v)
        setattr(self.module, self.name, weight_sn.reshape(weight.shape))


# ---------------------------------------------------------------- attention layers


@dataclass(frozen=True)
class _AttentionLayout:
    projections: tuple[str, ...]  # theta (queries), phi (keys), g (values), then o if any
    gain: str
    pool: bool
    returns_map: bool


_LAYOUTS = {
    "biggan_pytorch": _AttentionLayout(("theta", "phi", "g", "o"), "gamma", pool=True, returns_map=False),
    "studiogan": _AttentionLayout(
        ("conv1x1_theta", "conv1x1_phi", "conv1x1_g", "conv1x1_attn"), "sigma", pool=True, returns_map=False
    ),
    "sagan_pytorch": _AttentionLayout(("query_conv", "key_conv", "value_conv"), "gamma", pool=False, returns_map=True),
}


def _projection_conv(layer: nn.Module) -> nn.Module:
    return layer.module if _is_sagan_sn(layer) else layer


def _normalised_weight_and_bias(layer: nn.Module) -> tuple[Tensor, Tensor | None]:
    """The weight a 1x1 projection would use in its own forward (its spectral norm updated as there)."""
    if _is_sagan_sn(layer):
        layer._update_u_v()
        return getattr(layer.module, layer.name), layer.module.bias
    if _is_biggan_sn(layer):
        return layer.W_(), layer.bias
    for hook in _hook_spectral_norms(layer):
        hook(layer, ())
    return layer.weight, layer.bias


def _check_projection(owner: str, name: str, layer: object) -> None:
    conv = _projection_conv(layer) if isinstance(layer, nn.Module) else layer
    problem = None
    if not isinstance(conv, nn.Conv2d) or not (type(conv).forward is nn.Conv2d.forward or _is_biggan_sn(conv)):
        problem = f"is a {type(conv).__name__}, not a Conv2d or a codebase's spectrally normalised Conv2d"
    elif conv.kernel_size != (1, 1) or conv.stride != (1, 1) or conv.dilation != (1, 1) or conv.groups != 1:
        problem = f"is not a plain 1x1 convolution ({conv})"
    elif conv.padding not in ((0, 0), "valid"):
        problem = f"has padding {conv.padding}"
    elif conv._forward_hooks or any(not isinstance(h, _TorchSpectralNormHook) for h in conv._forward_pre_hooks.values()):
        problem = "has forward hooks other than torch's spectral norm, which the fused attention would skip"
    if problem is not None:
        raise ValueError(f"convert: cannot convert attention layer {owner}: its projection {name!r} {problem}")


@functools.lru_cache(maxsize=None)
def _forward_signature(cls: type) -> tuple[inspect.Signature, str]:
    """The original ``forward``'s signature and the name of its first argument (the feature map)."""
    signature = inspect.signature(cls.forward)
    return signature, list(signature.parameters)[1]


class _AttentionLayer(_Converted):
    """A codebase's attention layer with ``forward`` on :func:`ganops.nn.self_attention_2d`: accepts what the
    original ``forward`` accepts and returns what it returns."""

    _ganops_layout: _AttentionLayout
    _ganops_return_maps: bool

    def forward(self, *args, **kwargs):
        # Bound against the original signature: the same TypeError for a call the original would refuse.
        signature, input_name = _forward_signature(self._ganops_original_class)
        x = signature.bind(self, *args, **kwargs).arguments[input_name]
        layout = self._ganops_layout
        weights, biases = zip(*(_normalised_weight_and_bias(getattr(self, name)) for name in layout.projections))
        result = self_attention_2d(
            x, weights[0], weights[1], weights[2], getattr(self, layout.gain),
            weights[3] if len(weights) > 3 else None,
            theta_bias=biases[0], phi_bias=biases[1], g_bias=biases[2], o_bias=biases[3] if len(biases) > 3 else None,
            pool=layout.pool, backend=self._ganops_backend,
            return_attention_map=layout.returns_map and self._ganops_return_maps,
        )
        if layout.returns_map and not self._ganops_return_maps:
            return result, None
        return result


def _check_attention_layer(name: str, layer: nn.Module, source: str) -> None:
    layout = _LAYOUTS[source]
    owner = f"{name or '<model>'} ({type(layer).__name__}, layout {source!r})"
    missing = [attr for attr in (*layout.projections, layout.gain) if not hasattr(layer, attr)]
    if missing:
        raise ValueError(f"convert: cannot convert attention layer {owner}: it has no {', '.join(missing)}")
    if not isinstance(getattr(layer, layout.gain), nn.Parameter):
        raise ValueError(f"convert: cannot convert attention layer {owner}: {layout.gain!r} is not a Parameter")
    for projection in layout.projections:
        _check_projection(owner, projection, getattr(layer, projection))
    if layer._forward_hooks or layer._forward_pre_hooks:
        raise ValueError(f"convert: cannot convert attention layer {owner}: it has forward hooks")


def _looks_like(layer: nn.Module, source: str) -> bool:
    layout = _LAYOUTS[source]
    return all(isinstance(getattr(layer, attr, None), nn.Module) for attr in layout.projections) and isinstance(
        getattr(layer, layout.gain, None), nn.Parameter
    )


# ---------------------------------------------------------------- the summary


_KIND_NAMES = {
    "biggan_pytorch_sn": "BigGAN-PyTorch SN layers",
    "torch_hook_sn": "torch.nn.utils.spectral_norm (hook API) layers",
    "sagan_pytorch_sn": "SAGAN-PyTorch SpectralNorm wrappers",
    "torch_parametrization_sn": "torch parametrization spectral norms",
    "attention": "attention layers",
}


@dataclass
class ConversionSummary:
    """What :func:`convert` did: module names per kind (see ``_KIND_NAMES``), and the layers of a known kind it
    left as they were, with the reason."""

    converted: dict[str, list[str]] = field(default_factory=dict)
    left: dict[str, str] = field(default_factory=dict)
    reverted: bool = False

    def add(self, kind: str, name: str) -> None:
        self.converted.setdefault(kind, []).append(name or "<model>")

    def __str__(self) -> str:
        verb = "reverted" if self.reverted else "converted"
        parts = [f"{len(names)} {_KIND_NAMES[kind]}" for kind, names in self.converted.items()]
        text = f"ganops.convert: {verb} {', '.join(parts) if parts else 'nothing'}"
        if self.left:
            text += "; left as they were: " + "; ".join(f"{name} ({reason})" for name, reason in self.left.items())
        return text


# ---------------------------------------------------------------- spectral norm


def _replace_torch_parametrization(module: nn.Module, name: str, backend: str | None) -> bool:
    plist = module.parametrizations[name]
    replaced = False
    for index, existing in enumerate(plist):
        if not isinstance(existing, _TorchSpectralNorm):
            continue
        if hasattr(existing, "_u"):
            replacement = SpectralNorm(
                plist.original, existing.n_power_iterations, existing.dim, existing.eps,
                backend=backend, vectors=(existing._u, existing._v),
            )
        else:
            # A 1-D weight: plain normalisation, no vectors.
            replacement = SpectralNorm(plist.original, 1, existing.dim, existing.eps, backend=backend)
        replacement.train(existing.training)
        plist[index] = replacement
        replaced = True
    return replaced


def _revert_parametrization(module: nn.Module, name: str) -> bool:
    plist = module.parametrizations[name]
    reverted = False
    for index, existing in enumerate(plist):
        if isinstance(existing, SpectralNorm):
            torch_sn = _TorchSpectralNorm.__new__(_TorchSpectralNorm)
            nn.Module.__init__(torch_sn)
            torch_sn.dim, torch_sn.eps = existing.dim, existing.eps
            if hasattr(existing, "_u"):
                torch_sn.n_power_iterations = existing.n_power_iterations
                torch_sn.register_buffer("_u", existing._u)
                torch_sn.register_buffer("_v", existing._v)
            torch_sn.train(existing.training)
            plist[index] = torch_sn
            reverted = True
    return reverted


def _convert_spectral_norms(model: nn.Module, revert: bool, backend: str | None, summary: ConversionSummary) -> None:
    for name, module in list(model.named_modules()):
        for tensor_name in list(getattr(module, "parametrizations", {}).keys()):
            if revert:
                changed = _revert_parametrization(module, tensor_name)
            else:
                changed = _replace_torch_parametrization(module, tensor_name, backend)
            if changed:
                summary.add("torch_parametrization_sn", f"{name}.{tensor_name}" if name else tensor_name)
        for hook in _hook_spectral_norms(module):
            if revert and isinstance(hook, _GanopsHookSpectralNorm):
                hook.__class__ = _TorchSpectralNormHook
                del hook._ganops_backend
                summary.add("torch_hook_sn", name)
            elif not revert and not isinstance(hook, _GanopsHookSpectralNorm):
                hook.__class__ = _GanopsHookSpectralNorm
                hook._ganops_backend = backend
                summary.add("torch_hook_sn", name)
        for kind, detect, mixin in (
            ("biggan_pytorch_sn", _is_biggan_sn, _BigGANSNLayer),
            ("sagan_pytorch_sn", _is_sagan_sn, _SaganSNWrapper),
        ):
            if not detect(module):
                continue
            if revert and isinstance(module, mixin):
                _swap_out(module)
                summary.add(kind, name)
            elif not revert and not _is_converted(module):
                _check_sn_layer(name, module, kind)
                _swap_in(module, mixin, backend)
                summary.add(kind, name)


def _check_sn_layer(name: str, module: nn.Module, kind: str) -> None:
    if kind == "biggan_pytorch_sn":
        if module.num_svs < 1 or module.num_itrs < 1:
            raise ValueError(
                f"convert: BigGAN-PyTorch SN layer {name} ({type(module).__name__}) has num_svs={module.num_svs}, "
                f"num_itrs={module.num_itrs}; both must be >= 1 (its own W_ needs them too)"
            )
    else:
        for suffix in ("_u", "_v", "_bar"):
            if not isinstance(getattr(module.module, module.name + suffix, None), Tensor):
                raise ValueError(
                    f"convert: SAGAN-PyTorch SpectralNorm wrapper {name} has no {module.name + suffix!r} on its "
                    f"{type(module.module).__name__}; it cannot be converted"
                )


def convert_spectral_norms(model: nn.Module, revert: bool = False, *, backend: str | None = None) -> nn.Module:
    """Run every spectral norm of ``model`` (in place) on ganops's fused op, or back with ``revert=True``.

    Converted, each keeping its parameters, buffers, settings, state_dict layout and update order (module
    docstring): torch's parametrization, torch's old hook API ``torch.nn.utils.spectral_norm``, BigGAN-PyTorch's
    ``SN`` layers (``SNConv2d``, ``SNLinear``, ``SNEmbedding``) and SAGAN-PyTorch's ``SpectralNorm`` wrapper.
    ``revert=True`` restores the original classes and turns ganops's parametrizations into torch's.
    """
    if backend is not None:
        _backend.requested_backend(backend)
    _convert_spectral_norms(model, revert, backend, ConversionSummary(reverted=revert))
    return model


# ---------------------------------------------------------------- attention: building SelfAttention2d modules


_SOURCE_NAMES = {
    "biggan_pytorch": {"theta": "theta", "phi": "phi", "g": "g", "o": "o", "gamma": "gamma"},
    "studiogan": {"conv1x1_theta": "theta", "conv1x1_phi": "phi", "conv1x1_g": "g", "conv1x1_attn": "o", "sigma": "gamma"},
    "sagan_pytorch": {"query_conv": "theta", "key_conv": "phi", "value_conv": "g", "gamma": "gamma"},
}


def _biggan_power_iteration(weight: Tensor, u0: Tensor) -> tuple[Tensor, Tensor]:
    """BigGAN-PyTorch's one power-iteration step from ``u0``: its eval-mode ``sigma`` is ``u . W v`` of these."""
    matrix = weight.flatten(1)
    v = F.normalize(matrix.t() @ u0, dim=0, eps=1e-12)
    return F.normalize(matrix @ v, dim=0, eps=1e-12), v


def convert_state_dict(state_dict: dict[str, Tensor], source: str, spectral_norm: bool = True) -> dict[str, Tensor]:
    """A state dict of one attention layer of ``source`` (keys relative to that layer) for :class:`SelfAttention2d`.

    ``source``: ``"biggan_pytorch"``, ``"studiogan"`` or ``"sagan_pytorch"``. ``spectral_norm`` says whether the
    target module has it. Spectrally normalised sources keep their state: ``weight_orig/weight_u/weight_v`` map
    one to one; from BigGAN-PyTorch's ``u0``, ``_v = normalize(W^T u0)`` and ``_u = normalize(W _v)`` (its own
    power-iteration step), so the eval-mode outputs agree; its ``sv0`` is only a log of past values.
    (:func:`convert` keeps the codebase's own modules and layout instead.)
    """
    if source not in _SOURCE_NAMES:
        raise ValueError(f"convert_state_dict: source must be one of {tuple(_SOURCE_NAMES)}, got {source!r}")
    names = _SOURCE_NAMES[source]
    converted: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        layer, _, field_name = key.partition(".")
        if layer not in names:
            raise KeyError(f"convert_state_dict: unexpected key {key!r} for source {source!r}")
        target = names[layer]
        if target == "gamma":
            converted["gamma"] = value.reshape(())
            continue
        if field_name in ("sv0", "weight_v"):
            continue  # recomputed below (sv0) or carried with its weight (weight_v)
        weight = state_dict.get(f"{layer}.weight_orig", state_dict.get(f"{layer}.weight"))
        if field_name == "bias":
            converted[f"{target}.bias"] = value
        elif field_name in ("weight", "weight_orig"):
            converted[f"{target}.parametrizations.weight.original" if spectral_norm else f"{target}.weight"] = value
        elif field_name in ("u0", "weight_u") and spectral_norm:
            if field_name == "weight_u":
                u, v = value, state_dict[f"{layer}.weight_v"]
            else:
                u, v = _biggan_power_iteration(weight, value.reshape(-1))
            converted[f"{target}.parametrizations.weight.0._u"] = u
            converted[f"{target}.parametrizations.weight.0._v"] = v
        elif field_name in ("u0", "weight_u"):
            raise ValueError(
                f"convert_state_dict: {key!r} belongs to a spectrally normalised layer; convert with spectral_norm=True"
            )
        else:
            raise KeyError(f"convert_state_dict: unexpected key {key!r} for source {source!r}")
    return converted


def replace_attention_layers(model: nn.Module, layer_type: type, source: str, backend: str | None = None) -> int:
    """Replace, in place, every submodule of ``model`` of type ``layer_type`` by an equivalent :class:`SelfAttention2d`
    (ganops's own module and state_dict layout; :func:`convert` keeps the codebase's modules instead).

    ``source`` names the parameter layout of ``layer_type`` (see :func:`convert_state_dict`): ``"sagan_pytorch"``
    layers become ``variant="sagan"``, the others ``"biggan"``. Spectral norm is kept where the source has it
    (``weight_orig``/``u0`` keys), as ganops's; weights, power-iteration state, dtype, device and train/eval
    mode carry over, so eval outputs are unchanged. Returns the number of layers replaced.
    """
    if not isinstance(layer_type, type) or not issubclass(layer_type, nn.Module):
        raise TypeError(f"replace_attention_layers: layer_type must be an nn.Module subclass, got {layer_type!r}")
    if source not in _SOURCE_NAMES:
        raise ValueError(f"replace_attention_layers: source must be one of {tuple(_SOURCE_NAMES)}, got {source!r}")
    targets = [
        (parent, child_name, child)
        for parent in model.modules()
        for child_name, child in parent.named_children()
        if isinstance(child, layer_type)
    ]
    for parent, child_name, layer in targets:
        state = layer.state_dict()
        spectral = any(key.endswith((".weight_orig", ".u0")) for key in state)
        converted = convert_state_dict(state, source, spectral_norm=spectral)
        theta = converted.get("theta.parametrizations.weight.original", converted.get("theta.weight"))
        if theta is None:
            raise KeyError(f"replace_attention_layers: no theta/query weight found in {type(layer).__name__}'s state")
        variant = "sagan" if source == "sagan_pytorch" else "biggan"
        replacement = SelfAttention2d(theta.shape[1], variant, spectral_norm=spectral, backend=backend)
        replacement.to(device=theta.device, dtype=theta.dtype)
        replacement.load_state_dict(converted)
        replacement.train(layer.training)
        setattr(parent, child_name, replacement)
    return len(targets)


# ---------------------------------------------------------------- everything


def _convert_attention(
    model: nn.Module,
    attention_layers: Mapping[type, str],
    revert: bool,
    backend: str | None,
    return_attention_maps: bool,
    summary: ConversionSummary,
) -> None:
    for name, module in list(model.named_modules()):
        if revert:
            if isinstance(module, _AttentionLayer):
                _swap_out(module)
                summary.add("attention", name)
            continue
        if _is_converted(module):
            continue
        source = next((source for cls, source in attention_layers.items() if isinstance(module, cls)), None)
        if source is None:
            continue
        _check_attention_layer(name, module, source)
        _swap_in(module, _AttentionLayer, backend, _ganops_layout=_LAYOUTS[source], _ganops_return_maps=return_attention_maps)
        summary.add("attention", name)


def _unconverted_known_layers(model: nn.Module) -> dict[str, str]:
    left: dict[str, str] = {}
    for name, module in model.named_modules():
        label = name or "<model>"
        if _is_converted(module) or isinstance(module, SelfAttention2d):
            continue
        for source in _LAYOUTS:
            if _looks_like(module, source):
                left[label] = (
                    f"{type(module).__name__} has the {source} attention layout; convert it with "
                    f"attention_layers={{{type(module).__name__}: {source!r}}}"
                )
        if _is_biggan_sn(module) or _is_sagan_sn(module):
            left[label] = f"{type(module).__name__}: a spectral norm left unconverted"
        if any(not isinstance(hook, _GanopsHookSpectralNorm) for hook in _hook_spectral_norms(module)):
            left[label] = "torch.nn.utils.spectral_norm hook left unconverted"
    return left


def convert(
    model: nn.Module,
    revert: bool = False,
    *,
    attention_layers: Mapping[type, str] | None = None,
    backend: str | None = None,
    strict: bool = False,
    return_attention_maps: bool = True,
    return_summary: bool = False,
) -> nn.Module | tuple[nn.Module, ConversionSummary]:
    """Run ``model``'s spectral norms and attention layers on ganops's fused ops, in place; return ``model``.

    The modules stay the same objects (their classes become subclasses of their own classes, see the module
    docstring): same parameters, buffers, settings, ``state_dict`` keys (checkpoints load strictly both ways),
    call signatures, return values and update order as the codebase's own code.

    * Spectral norm: torch's parametrization, torch's old hook API (``torch.nn.utils.spectral_norm``, as in
      StudioGAN), BigGAN-PyTorch's ``SN`` layers and SAGAN-PyTorch's ``SpectralNorm`` wrapper.
    * Attention: ``attention_layers`` maps a codebase's attention class to its layout:
      ``{layers.Attention: "biggan_pytorch"}`` (BigGAN-PyTorch), ``{ops.SelfAttention: "studiogan"}``
      (StudioGAN's ``src/utils/ops.py``), ``{Self_Attn: "sagan_pytorch"}`` (SAGAN-PyTorch). Every instance
      (subclasses included) runs :func:`ganops.nn.self_attention_2d`; a layer whose projections are not plain
      1x1 convolutions raises a ``ValueError`` naming it. Calls are bound to the original class's ``forward``
      signature (BigGAN-PyTorch's ``y`` is accepted and unused, as there); the layout fixes what is
      returned: a tensor for BigGAN-PyTorch and StudioGAN, ``(out, attention)`` for SAGAN-PyTorch (a
      look-alike class that returns only ``out`` is not that layout).
    * ``return_attention_maps``: SAGAN-PyTorch's ``Self_Attn`` returns ``(out, attention)``; the map costs
      O(N^2) memory, as in the original. ``False`` returns ``(out, None)`` instead.
    * ``revert=True`` restores the original classes (and turns ganops's spectral-norm parametrizations into
      torch's).
    * What was converted is logged (logger ``ganops.conversion``, INFO) and, with ``return_summary=True``,
      returned as ``(model, ConversionSummary)``. Layers of a known kind left as they were (an attention
      layer of a known layout whose class is not in ``attention_layers``) are logged as a warning, or raise a
      ``ValueError`` with ``strict=True``.
    """
    if attention_layers is not None and not isinstance(attention_layers, Mapping):
        raise TypeError(f"convert: attention_layers must be a mapping {{layer class: layout}}, got {attention_layers!r}")
    for layer_type, source in (attention_layers or {}).items():
        if not isinstance(layer_type, type) or not issubclass(layer_type, nn.Module):
            raise TypeError(f"convert: attention_layers keys must be nn.Module subclasses, got {layer_type!r}")
        if source not in _LAYOUTS:
            raise ValueError(
                f"convert: attention_layers maps a class to its source layout; source must be one of "
                f"{tuple(_LAYOUTS)}, got {source!r} for {layer_type.__name__}"
            )
    if backend is not None:
        _backend.requested_backend(backend)
    summary = ConversionSummary(reverted=revert)
    _convert_attention(model, attention_layers or {}, revert, backend, return_attention_maps, summary)
    _convert_spectral_norms(model, revert, backend, summary)
    if not revert:
        summary.left = _unconverted_known_layers(model)
    if summary.left and strict:
        raise ValueError(str(summary))
    (logger.warning if summary.left else logger.info)("%s", summary)
    return (model, summary) if return_summary else model
