"""The one way ganops registers an op with torch.library: fake kernel, input check, autograd and autocast.

Every backend of every op is a chain of ops, each the gradient of the one before (as in StyleGAN's
``torch_utils/ops``): ``forward -> backward -> double backward``, and the double backward's own gradient is a
vector-Jacobian product of the reference (third derivatives are rare enough not to deserve kernels). Each link
of a chain is described by one :class:`Stage` and registered by :func:`register`; :func:`register_chain` builds
the three stages of the common case (one differentiable output; each backward takes the incoming gradients
followed by the op's own inputs). Ops whose chain differs (attention saves its outputs, spectral norm takes
lists and has non-differentiable outputs, the gradient penalty's backward takes the norms its forward returned)
describe their stages themselves, with the same :func:`register`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


def op(qualified_name: str):
    """The ``OpOverload`` of ``"namespace::name"``."""
    namespace, name = qualified_name.split("::")
    return getattr(getattr(torch.ops, namespace), name).default


def as_tuple(value) -> tuple:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,)


def _is_tensor_argument(value) -> bool:
    return isinstance(value, Tensor) or (isinstance(value, (list, tuple)) and all(isinstance(v, Tensor) for v in value) and len(value) > 0)


def _flatten(items: Sequence) -> tuple[list[Tensor], list[int | None]]:
    """Tensors and lists of tensors as one flat list, with each item's list length (None for a tensor)."""
    flat: list[Tensor] = []
    lengths: list[int | None] = []
    for item in items:
        if isinstance(item, (list, tuple)):
            flat.extend(item)
            lengths.append(len(item))
        else:
            flat.append(item)
            lengths.append(None)
    return flat, lengths


def _unflatten(flat: Sequence[Tensor], lengths: Sequence[int | None]) -> tuple:
    items, position = [], 0
    for length in lengths:
        if length is None:
            items.append(flat[position])
            position += 1
        else:
            items.append(list(flat[position : position + length]))
            position += length
    return tuple(items)


def _save_tensor_inputs(inputs: tuple, output) -> tuple:
    return tuple(value for value in inputs if _is_tensor_argument(value))


@dataclass(frozen=True)
class Stage:
    """How to register one op of a chain.

    ``gradient(saved, attributes, grads)`` returns the gradients of the inputs at ``differentiable_inputs``, in
    that order; ``saved`` is what ``save(inputs, output)`` chose (by default every tensor input, lists
    included), ``attributes`` the op's non-tensor arguments in order, ``grads`` the output gradients.
    ``non_differentiable(output)`` lists outputs autograd must treat as constants. ``check(*inputs)`` raises
    a clear error for inconsistent inputs; the fake kernel runs it too, so ``torch.compile`` checks at trace time.
    """

    name: str
    fake: Callable
    differentiable_inputs: tuple[int, ...]
    gradient: Callable[[tuple, tuple, tuple], Sequence]
    save: Callable[[tuple, object], tuple] = _save_tensor_inputs
    non_differentiable: Callable[[object], Sequence[Tensor]] | None = None
    check: Callable[..., object] | None = None


def register(stage: Stage) -> None:
    """Register ``stage``'s fake kernel (behind its input check) and its autograd formula with torch.library."""

    def checked_fake(*args):
        if stage.check is not None:
            stage.check(*args)
        return stage.fake(*args)

    def setup_context(ctx, inputs, output) -> None:
        if stage.non_differentiable is not None:
            ctx.mark_non_differentiable(*stage.non_differentiable(output))
        flat, ctx.saved_lengths = _flatten(stage.save(inputs, output))
        ctx.save_for_backward(*flat)
        ctx.attributes = tuple(value for value in inputs if not _is_tensor_argument(value) and not isinstance(value, list))
        # What "no gradient" looks like for each input: None, or a list of Nones for a list of tensors.
        ctx.no_gradients = [[None] * len(value) if isinstance(value, list) else None for value in inputs]

    def backward(ctx, *grads):
        saved = _unflatten(ctx.saved_tensors, ctx.saved_lengths)
        gradients = list(ctx.no_gradients)
        for position, gradient in zip(stage.differentiable_inputs, stage.gradient(saved, ctx.attributes, grads)):
            gradients[position] = gradient
        return tuple(gradients)

    torch.library.register_fake(stage.name, checked_fake)
    torch.library.register_autograd(stage.name, backward, setup_context=setup_context)


def register_chain(
    names: tuple[str, str, str],
    fakes: tuple[Callable, Callable, Callable],
    num_tensor_inputs: int,
    third_order_vjp: Callable[[tuple, tuple, tuple], Sequence],
    check: Callable[..., object] | None = None,
) -> None:
    """Make op ``names[0]`` differentiable to any order, its gradient being ``names[1]``, whose gradient is
    ``names[2]``, whose gradient is ``third_order_vjp(saved_inputs, attributes, grads)``.

    With ``inputs`` the ``num_tensor_inputs`` tensor arguments and ``attrs`` the trailing non-tensor ones:
    ``forward(*inputs, *attrs) -> out``;
    ``backward(grad_out, *inputs, *attrs) -> grad_inputs`` (a tensor, or a tuple for several inputs);
    ``double_backward(*grad_grad_inputs, grad_out, *inputs, *attrs) -> (grad_grad_out, *grad_inputs)``.
    ``check(*inputs, *attrs)`` validates the forward's arguments (see :class:`Stage`).
    """
    forward, backward, double_backward = names
    backward_op, double_backward_op = op(backward), op(double_backward)
    n = num_tensor_inputs

    def check_backward(*args):
        if check is not None:
            check(*args[1:])

    def check_double_backward(*args):
        if check is not None:
            check(*args[n + 1 :])

    register(Stage(
        forward, fakes[0], tuple(range(n)),
        lambda saved, attrs, grads: as_tuple(backward_op(grads[0], *saved, *attrs)),
        check=check,
    ))
    register(Stage(
        backward, fakes[1], tuple(range(n + 1)),
        lambda saved, attrs, grads: as_tuple(double_backward_op(*grads, *saved, *attrs)),
        check=check_backward,
    ))
    register(Stage(double_backward, fakes[2], tuple(range(2 * n + 1)), third_order_vjp, check=check_double_backward))


def autocast_inputs(*tensors: Tensor) -> tuple:
    """Under ``torch.autocast`` a matmul-like op takes float16/32 inputs in the autocast dtype, as SDPA does
    (float64 stays, as autocast leaves it); outside autocast, or for non-tensors, the inputs are returned as they are."""
    if not all(isinstance(t, Tensor) for t in tensors) or not torch.is_autocast_enabled(tensors[0].device.type):
        return tensors
    dtype = torch.get_autocast_dtype(tensors[0].device.type)
    return tuple(t.to(dtype) if t.is_floating_point() and t.dtype != torch.float64 else t for t in tensors)
