"""The decoder and cross-entropy as one operation that never keeps the full (N, V) logits.

``F.cross_entropy(F.linear(h, W, b), targets)`` keeps the (N, V) logits and
their log-softmax for the backward pass. The backward pass then allocates two
more (N, V) tensors, the zero-filled gradient of the loss with respect to the
log-probabilities and the gradient with respect to the logits. At a batch of
80 x 70 tokens over the WikiText-2 vocabulary (V = 33,278), each of them is
711 MiB.

:func:`linear_cross_entropy` computes the same mean loss in chunks of rows. For
each chunk it computes the logits, their log-sum-exp and, in the same buffer,
``softmax - one_hot``, which is the gradient of the summed loss with respect
to those logits. From that buffer it accumulates the gradients of the
features, the weight and the bias right away, and frees it. The backward pass
only scales the stored gradients by ``grad_output / N``. The floating-point
operations are the same three matrix products as in the unfused form, but
the extra memory is one chunk of logits plus gradients the size of the
inputs, and no (N, V) tensor is filled, copied or log-softmaxed.
"""

from __future__ import annotations

import torch
from torch import Tensor

# Logit elements per chunk: 4 Mi elements, 16 MiB in float32. For V <= 40,000
# a chunk has over 100 rows, enough for efficient matrix products.
CHUNK_ELEMENTS = 2**22


def chunk_rows(vocab_size: int) -> int:
    """Return the rows per chunk for a vocabulary of ``vocab_size`` words."""
    return max(1, CHUNK_ELEMENTS // vocab_size)


def _compute_dtype(device_type: str, dtype: torch.dtype) -> torch.dtype:
    """Return the dtype of the matrix products: autocast's when it is enabled on this device, else ``dtype``."""
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return dtype


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, features: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor) -> Tensor:
        # features (N, H), weight (V, H), bias (V,) or None, targets (N,) word ids.
        rows = features.size(0)
        need_features, need_weight, need_bias = ctx.needs_input_grad[:3]
        need_any = need_features or need_weight or need_bias
        dtype = _compute_dtype(features.device.type, features.dtype)

        with torch.autocast(features.device.type, enabled=False):
            features_c, weight_c = features.to(dtype), weight.to(dtype)
            bias_c = None if bias is None else bias.to(dtype)
            grad_features = torch.empty_like(features) if need_features else None
            grad_weight = torch.zeros_like(weight) if need_weight else None
            grad_bias = torch.zeros_like(bias) if need_bias else None
            total = torch.zeros((), device=features.device, dtype=torch.float32)

            step = chunk_rows(weight.size(0))
            for start in range(0, rows, step):
                h = features_c[start : start + step]  # (C, H)
                t = targets[start : start + step].unsqueeze(1)  # (C, 1)
                if bias_c is None:
                    logits = h @ weight_c.t()
                else:
                    logits = torch.addmm(bias_c, h, weight_c.t())  # (C, V)
                log_probs = torch.log_softmax(logits.float(), dim=1)  # (C, V)
                total -= log_probs.gather(1, t).sum()
                if not need_any:
                    continue

                # The gradient of the chunk's summed loss: softmax(logits) - one_hot(targets).
                grad_logits = log_probs.exp_()
                # A one-dimensional scatter_add_ is deterministic on CUDA as well.
                positions = torch.arange(0, grad_logits.numel(), grad_logits.size(1), device=t.device) + t.squeeze(1)
                grad_logits.view(-1).scatter_add_(0, positions, grad_logits.new_full(positions.shape, -1.0))
                if need_bias:
                    grad_bias += grad_logits.sum(0)
                grad_logits = grad_logits.to(dtype)
                if need_features:
                    grad_features[start : start + step] = grad_logits @ weight_c
                if need_weight:
                    if dtype == grad_weight.dtype:
                        grad_weight.addmm_(grad_logits.t(), h)
                    else:
                        grad_weight += grad_logits.t() @ h

        ctx.rows = rows
        ctx.save_for_backward(grad_features, grad_weight, grad_bias)
        return total / rows

    @staticmethod
    def backward(ctx, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        scale = grad_output / ctx.rows
        grads = [None if grad is None else grad * scale.to(grad.dtype) for grad in ctx.saved_tensors]
        return grads[0], grads[1], grads[2], None


def linear_cross_entropy(features: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor) -> Tensor:
    """Return ``F.cross_entropy(F.linear(features, weight, bias), targets)``, the mean over rows, in chunks.

    ``features`` is ``(..., H)`` and ``targets`` the matching ``(...)`` word
    ids. The gradients are computed during the forward pass, whenever autograd
    needs any (so a forward without a later backward costs the backward's
    matrix products too), and only a first derivative is available. Under
    autocast the matrix products run in autocast's dtype and the softmax in
    float32.
    """
    return _LinearCrossEntropy.apply(features.reshape(-1, features.size(-1)), weight, bias, targets.reshape(-1))
