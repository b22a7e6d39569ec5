"""torch.library glue shared by every op: autograd chains in which each backward is itself an op."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


def _op(qualified_name: str):
    namespace, name = qualified_name.split("::")
    return getattr(getattr(torch.ops, namespace), name).default


def _as_tuple(value) -> tuple:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,)


def register_autograd_chain(
    forward: str,
    backward: str,
    double_backward: str,
    num_attributes: int,
    third_order_vjp: Callable,
) -> None:
    """Make op ``forward`` differentiable to any order.

    With ``inputs`` the tensor arguments and ``attrs`` the ``num_attributes`` trailing non-tensor ones:
    ``forward(*inputs, *attrs) -> out``;
    ``backward(grad_out, *inputs, *attrs) -> grad_inputs`` (a tensor, or a tuple for several inputs);
    ``double_backward(*grad_grad_inputs, grad_out, *inputs, *attrs) -> (grad_grad_out, *grad_inputs)``.
    The gradient of each op is the next op. The gradient of ``double_backward`` is
    ``third_order_vjp(saved_tensors, attrs, grads)``, typically the vector-Jacobian product of the
    reference: third-order derivatives are rare enough not to deserve kernels.
    """
    backward_op = _op(backward)
    double_backward_op = _op(double_backward)
    no_grads_for_attributes = (None,) * num_attributes

    def save_tensors_and_attributes(ctx, inputs: Sequence, output) -> None:
        ctx.save_for_backward(*inputs[: len(inputs) - num_attributes])
        ctx.attributes = tuple(inputs[len(inputs) - num_attributes :])

    def gradient_of_forward(ctx, grad_out):
        grad_inputs = backward_op(grad_out, *ctx.saved_tensors, *ctx.attributes)
        return (*_as_tuple(grad_inputs), *no_grads_for_attributes)

    def gradient_of_backward(ctx, *grad_grad_inputs):
        grads = double_backward_op(*grad_grad_inputs, *ctx.saved_tensors, *ctx.attributes)
        return (*grads, *no_grads_for_attributes)

    def gradient_of_double_backward(ctx, *grads):
        return (*third_order_vjp(ctx.saved_tensors, ctx.attributes, grads), *no_grads_for_attributes)

    torch.library.register_autograd(forward, gradient_of_forward, setup_context=save_tensors_and_attributes)
    torch.library.register_autograd(backward, gradient_of_backward, setup_context=save_tensors_and_attributes)
    torch.library.register_autograd(
        double_backward, gradient_of_double_backward, setup_context=save_tensors_and_attributes
    )
