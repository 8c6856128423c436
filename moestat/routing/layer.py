"""Batched experts and the MoE layer that applies them to routed tokens.

The router decides, once, which tokens go to which experts and with what
weight (a :class:`~moestat.routing._base.Routing`); the layer only
computes ``y_t = sum_s E^shared_s(x_t) + sum_i combine[t, i] E_i(x_t)``
(routing.md section 0; the residual is the caller's). Three compute paths
give the same ``y`` and never change which tokens are kept (routing.md
section 4.4):

- ``"all"``: every expert on every token, weighted by ``combine`` (one
  batched matmul; best for the toolkit's small experts and for EM);
- ``"sorted"``: the dispatched (token, expert) pairs sorted by expert,
  experts applied to contiguous row blocks, outputs weighted and added back
  in float32 (FastMoE / MegaBlocks style);
- ``"einsum"``: GShard's dense one-hot (B, n, m, C) dispatch and combine,
  kept as the reference of the tests and the benchmark's baseline.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from moestat.routing._base import Routing, as_groups

__all__ = [
    "ACTIVATIONS",
    "GROUPED_METHODS",
    "IMPLS",
    "BatchedExperts",
    "ExpertMLP",
    "LinearExperts",
    "SharedExperts",
    "MoELayer",
    "combine_all",
    "combine_sorted",
    "combine_einsum",
    "choose_impl",
]

#: Hidden activations of :class:`ExpertMLP` (``activation``), by name.
ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "relu": F.relu,
    "gelu": F.gelu,
    "silu": F.silu,
    "tanh": torch.tanh,
    "identity": lambda h: h,
}
#: Compute paths of :class:`MoELayer` (``impl``).
IMPLS = ("auto", "all", "sorted", "einsum")
#: Methods of :meth:`BatchedExperts.forward_grouped` (``method``).
GROUPED_METHODS = ("auto", "grouped_mm", "padded", "loop")

# impl="auto" picks "all" below these sizes (see choose_impl)
_ALL_MAX_EXPERT_WIDTH = 4096
_ALL_MAX_ELEMENTS = 2**21


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32, or float64 for float64 inputs: the dtype of the combine sums."""
    return torch.promote_types(dtype, torch.float32)


def _uniform_(tensor: Tensor, bound: float, generator: torch.Generator | None) -> None:
    with torch.no_grad():
        tensor.uniform_(-bound, bound, generator=generator)


def _seeded_generator(random_state: int | None) -> torch.Generator | None:
    """A CPU generator seeded with ``random_state``; None for torch's global one."""
    if random_state is None:
        return None
    return torch.Generator().manual_seed(int(random_state))


def _check_sizes(**sizes: int) -> None:
    """Raise a ValueError naming the first size below 1."""
    for name, value in sizes.items():
        if int(value) < 1:
            raise ValueError(f"{name} must be a positive int; got {value!r}.")


class BatchedExperts(nn.Module):
    """``m`` experts whose weights are stacked along a leading expert axis.

    Subclasses hold (m, ...) weight tensors and implement
    :meth:`forward_all`, :meth:`forward_batched`, :meth:`forward_expert` and
    ``_forward_offsets`` (the experts on expert-sorted rows through
    ``torch._grouped_mm``); :meth:`forward_grouped` is shared.

    Parameters
    ----------
    *args, **kwargs
        Passed to ``torch.nn.Module``; the base class has no constructor of
        its own (the subclasses' constructors set the attributes below).

    Attributes
    ----------
    n_experts : int
        ``m``.
    d_in, d_out : int
        Input and output features.
    width : int
        The size that sets the cost of one expert on one token (hidden
        width of an MLP, ``d_out`` of a linear expert); used by
        :func:`choose_impl`.
    """

    n_experts: int
    d_in: int
    d_out: int
    width: int

    def forward(self, x: Tensor) -> Tensor:
        """Every expert on every token: same as :meth:`forward_all`."""
        return self.forward_all(x)

    def forward_all(self, x: Tensor) -> Tensor:
        """Every expert on every token: (..., d_in) -> (..., m, d_out)."""
        raise NotImplementedError

    def forward_batched(self, x: Tensor) -> Tensor:
        """Expert ``i`` on slab ``i``: (m, T, d_in) -> (m, T, d_out)."""
        raise NotImplementedError

    def forward_expert(self, i: int, x: Tensor) -> Tensor:
        """Expert ``i`` alone: (..., d_in) -> (..., d_out)."""
        self._check_input(x)
        return self._expert_forward(tuple(p[i].to(x.dtype) for p in self._params()), x)

    def _params(self) -> tuple[Tensor, ...]:
        """The stacked (m, ...) parameters, as ``_expert_forward`` takes them."""
        raise NotImplementedError

    def _expert_forward(self, params: tuple[Tensor, ...], x: Tensor) -> Tensor:
        """One expert, given its own parameters, on ``x``."""
        raise NotImplementedError

    def _forward_offsets(self, x: Tensor, offsets: Tensor, rows: Tensor) -> Tensor:
        raise NotImplementedError

    def _check_input(self, x: Tensor) -> None:
        if x.shape[-1] != self.d_in:
            raise ValueError(
                f"x has {x.shape[-1]} features; the experts take d_in={self.d_in}."
            )

    def grouped_mm_applicable(self, x: Tensor) -> bool:
        """Whether ``torch._grouped_mm`` serves ``x`` in ``forward_grouped``.

        True for bf16 tensors on a CUDA device of compute capability 9.0 or
        more (Hopper), with every matrix dimension a multiple of 8 (the
        kernel wants strides that are multiples of 16 bytes).
        """
        if not hasattr(torch, "_grouped_mm") or not x.is_cuda:
            return False
        if x.dtype != torch.bfloat16:
            return False
        if torch.cuda.get_device_capability(x.device) < (9, 0):
            return False
        return self._aligned_for_grouped_mm(x.dtype)

    def _aligned_for_grouped_mm(self, dtype: torch.dtype) -> bool:
        size = torch.empty((), dtype=dtype).element_size()
        dims = (self.d_in, self.width, self.d_out)
        return all(dim * size % 16 == 0 for dim in dims)

    def forward_grouped(
        self,
        x_sorted: Tensor,
        counts: Tensor | Sequence[int],
        *,
        max_count: int | None = None,
        method: str = "auto",
    ) -> Tensor:
        """The experts on rows already sorted by expert.

        Parameters
        ----------
        x_sorted : Tensor of shape (N, d_in)
            Rows of expert 0 first, then expert 1, ...
        counts : LongTensor or sequence of int, length m
            Rows per expert; they sum to ``N``.
        max_count : int, optional
            An upper bound on ``counts`` (the padded path's buffer length;
            e.g. ``B * C`` under capacity ``C``). Without it the padded
            path reads the largest count on the host.
        method : {"auto", "grouped_mm", "padded", "loop"}, default="auto"
            ``"grouped_mm"``: ``torch._grouped_mm`` with int32 cumulative
            offsets (no padding, no host sync); ``"padded"``: scatter into
            an (m, max_count, d_in) buffer and one batched matmul;
            ``"loop"``: one matmul per expert over its row block (reads
            ``counts`` on the host). ``"auto"`` takes ``"grouped_mm"`` where
            :meth:`grouped_mm_applicable`, else ``"padded"`` on CUDA (one
            launch instead of m), else ``"loop"`` (no padded rows; on the
            CPU a small matmul costs no kernel launch).

        Returns
        -------
        Tensor of shape (N, d_out)
            Row ``r`` is its expert's output, in ``x_sorted.dtype``.
        """
        self._check_input(x_sorted)
        if method not in GROUPED_METHODS:
            raise ValueError(
                f"Unknown method {method!r}; use one of {GROUPED_METHODS}."
            )
        counts_t = torch.as_tensor(counts, dtype=torch.long, device=x_sorted.device)
        if counts_t.shape != (self.n_experts,):
            raise ValueError(
                f"counts must have one entry per expert ({self.n_experts}); got "
                f"shape {tuple(counts_t.shape)}."
            )
        if method == "auto":
            if self.grouped_mm_applicable(x_sorted):
                method = "grouped_mm"
            elif x_sorted.is_cuda:
                method = "padded"
            else:
                method = "loop"
        n_rows = x_sorted.shape[0]
        if method == "grouped_mm":
            if not hasattr(torch, "_grouped_mm"):
                raise ValueError(
                    "method='grouped_mm' needs torch._grouped_mm (PyTorch >= 2.8); "
                    "use 'padded' or 'loop'."
                )
            if not self._aligned_for_grouped_mm(x_sorted.dtype):
                raise ValueError(
                    "method='grouped_mm' needs d_in, the hidden width and d_out "
                    "to be multiples of 16 bytes in the input's dtype; got "
                    f"{(self.d_in, self.width, self.d_out)} in {x_sorted.dtype}. "
                    "Use 'padded' or 'loop'."
                )
            offsets = torch.cumsum(counts_t, 0).to(torch.int32)
            rows = self._row_experts(counts_t, n_rows)
            return self._forward_offsets(x_sorted, offsets, rows)
        if method == "padded":
            return self._forward_padded(x_sorted, counts_t, max_count)
        sizes = [int(c) for c in counts_t.tolist()]  # host sync
        parts = torch.split(x_sorted, sizes)
        # one cast and one unbind: the backward stacks the m gradients once
        # instead of adding m full-size gradients of p[i]
        per_expert = zip(
            *(p.to(x_sorted.dtype).unbind(0) for p in self._params()), strict=True
        )
        outputs = [
            self._expert_forward(params, part)
            if part.shape[0]
            else x_sorted.new_empty(0, self.d_out)
            for params, part in zip(per_expert, parts, strict=True)
        ]
        return torch.cat(outputs, dim=0)

    def _row_experts(self, counts: Tensor, n_rows: int) -> Tensor:
        experts = torch.arange(self.n_experts, device=counts.device)
        return torch.repeat_interleave(experts, counts, output_size=n_rows)

    def _forward_padded(
        self, x_sorted: Tensor, counts: Tensor, max_count: int | None
    ) -> Tensor:
        n_rows = x_sorted.shape[0]
        if max_count is None:
            max_count = int(counts.max()) if n_rows else 0  # host sync
        rows = self._row_experts(counts, n_rows)
        starts = torch.cumsum(counts, 0) - counts
        rank = torch.arange(n_rows, device=x_sorted.device) - starts[rows]
        buffer = x_sorted.new_zeros(self.n_experts, max(max_count, 1), self.d_in)
        buffer = buffer.index_put((rows, rank), x_sorted)
        return self.forward_batched(buffer)[rows, rank]


class ExpertMLP(BatchedExperts):
    """``m`` two-layer MLP experts ``E_i(x) = W2_i act(W1_i x + b1_i) + b2_i``.

    Parameters
    ----------
    n_experts : int
        Number of experts ``m``.
    d_model : int
        Input and output features ``d``.
    d_hidden : int
        Hidden width of each expert.
    activation : {"relu", "gelu", "silu", "tanh", "identity"}, default="relu"
        Hidden activation.
    dtype : torch.dtype, optional
        Dtype of the weights (float32 by default). The experts compute in
        the input's dtype: weights of another dtype are cast on the fly
        (gradients still reach the stored weights).
    random_state : int or None, default=None
        Seed of the initialisation (``nn.Linear``'s: uniform in
        ``+-1/sqrt(fan_in)``); None draws from torch's global generator.

    Attributes
    ----------
    w1 : Parameter of shape (m, d_model, d_hidden)
    b1 : Parameter of shape (m, d_hidden)
    w2 : Parameter of shape (m, d_hidden, d_model)
    b2 : Parameter of shape (m, d_model)

    Examples
    --------
    >>> import torch
    >>> experts = ExpertMLP(4, 8, 16, random_state=0)
    >>> experts.forward_all(torch.zeros(2, 3, 8)).shape
    torch.Size([2, 3, 4, 8])
    """

    def __init__(
        self,
        n_experts: int,
        d_model: int,
        d_hidden: int,
        activation: str = "relu",
        dtype: torch.dtype | None = None,
        *,
        random_state: int | None = None,
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"Unknown activation {activation!r}; use one of {sorted(ACTIVATIONS)}."
            )
        _check_sizes(n_experts=n_experts, d_model=d_model, d_hidden=d_hidden)
        self.n_experts = int(n_experts)
        self.d_in = self.d_out = self.d_model = int(d_model)
        self.width = self.d_hidden = int(d_hidden)
        self.activation = activation
        self._act = ACTIVATIONS[activation]
        m, d, h = self.n_experts, self.d_model, self.d_hidden
        dtype = dtype or torch.float32
        self.w1 = nn.Parameter(torch.empty(m, d, h, dtype=dtype))
        self.b1 = nn.Parameter(torch.empty(m, h, dtype=dtype))
        self.w2 = nn.Parameter(torch.empty(m, h, d, dtype=dtype))
        self.b2 = nn.Parameter(torch.empty(m, d, dtype=dtype))
        self.reset_parameters(random_state)

    def reset_parameters(self, random_state: int | None = None) -> None:
        """Uniform ``+-1/sqrt(fan_in)`` weights and biases, as ``nn.Linear``."""
        generator = _seeded_generator(random_state)
        bound1 = 1.0 / math.sqrt(self.d_model)
        bound2 = 1.0 / math.sqrt(self.d_hidden)
        for tensor, bound in (
            (self.w1, bound1),
            (self.b1, bound1),
            (self.w2, bound2),
            (self.b2, bound2),
        ):
            _uniform_(tensor, bound, generator)

    def _weights(self, dtype: torch.dtype) -> tuple[Tensor, ...]:
        return tuple(p.to(dtype) for p in self._params())

    def forward_all(self, x: Tensor) -> Tensor:
        """Every expert on every token: (..., d) -> (..., m, d)."""
        self._check_input(x)
        w1, b1, w2, b2 = self._weights(x.dtype)
        m, d, h = self.n_experts, self.d_model, self.d_hidden
        # the first layer of all experts is one (d, m*h) matmul
        hidden = x @ w1.permute(1, 0, 2).reshape(d, m * h)
        hidden = self._act(hidden.unflatten(-1, (m, h)) + b1)
        return torch.einsum("...mh,mhd->...md", hidden, w2) + b2

    def forward_sum(self, x: Tensor) -> Tensor:
        """``sum_i E_i(x)``: the experts as one MLP of width ``m * d_hidden``."""
        self._check_input(x)
        w1, b1, w2, b2 = self._weights(x.dtype)
        m, d, h = self.n_experts, self.d_model, self.d_hidden
        hidden = self._act(x @ w1.permute(1, 0, 2).reshape(d, m * h) + b1.reshape(-1))
        return hidden @ w2.reshape(m * h, d) + b2.sum(0)

    def forward_batched(self, x: Tensor) -> Tensor:
        """Expert ``i`` on slab ``i``: (m, T, d) -> (m, T, d)."""
        self._check_input(x)
        w1, b1, w2, b2 = self._weights(x.dtype)
        hidden = self._act(torch.baddbmm(b1.unsqueeze(1), x, w1))
        return torch.baddbmm(b2.unsqueeze(1), hidden, w2)

    def _params(self) -> tuple[Tensor, ...]:
        return (self.w1, self.b1, self.w2, self.b2)

    def _expert_forward(self, params: tuple[Tensor, ...], x: Tensor) -> Tensor:
        w1, b1, w2, b2 = params
        return self._act(x @ w1 + b1) @ w2 + b2

    def _forward_offsets(self, x: Tensor, offsets: Tensor, rows: Tensor) -> Tensor:
        w1, b1, w2, b2 = self._weights(x.dtype)
        hidden = self._act(torch._grouped_mm(x, w1, offs=offsets) + b1[rows])
        return torch._grouped_mm(hidden, w2, offs=offsets) + b2[rows]

    def extra_repr(self) -> str:
        """Sizes and activation."""
        return (
            f"n_experts={self.n_experts}, d_model={self.d_model}, "
            f"d_hidden={self.d_hidden}, activation={self.activation!r}"
        )


class LinearExperts(BatchedExperts):
    """``m`` linear experts ``E_i(x) = x W_i + b_i`` (the toolkit's linear means).

    Parameters
    ----------
    n_experts : int
        Number of experts ``m``.
    d_in, d_out : int
        Input and output features.
    bias : bool, default=True
        Whether each expert has an intercept ``b_i``.
    dtype : torch.dtype, optional
        Dtype of the weights (float32 by default); the experts compute in
        the input's dtype.
    random_state : int or None, default=None
        Seed of the initialisation (uniform in ``+-1/sqrt(d_in)``).

    Attributes
    ----------
    weight : Parameter of shape (m, d_in, d_out)
    bias : Parameter of shape (m, d_out) or None

    Examples
    --------
    >>> import torch
    >>> experts = LinearExperts(3, 2, 1, random_state=0)
    >>> experts.forward_all(torch.zeros(5, 2)).shape
    torch.Size([5, 3, 1])
    """

    def __init__(
        self,
        n_experts: int,
        d_in: int,
        d_out: int = 1,
        *,
        bias: bool = True,
        dtype: torch.dtype | None = None,
        random_state: int | None = None,
    ) -> None:
        super().__init__()
        _check_sizes(n_experts=n_experts, d_in=d_in, d_out=d_out)
        self.n_experts = int(n_experts)
        self.d_in = int(d_in)
        self.width = self.d_out = int(d_out)
        dtype = dtype or torch.float32
        self.weight = nn.Parameter(
            torch.empty(self.n_experts, self.d_in, self.d_out, dtype=dtype)
        )
        self.bias = (
            nn.Parameter(torch.empty(self.n_experts, self.d_out, dtype=dtype))
            if bias
            else None
        )
        self.reset_parameters(random_state)

    def reset_parameters(self, random_state: int | None = None) -> None:
        """Uniform ``+-1/sqrt(d_in)`` weights and intercepts."""
        generator = _seeded_generator(random_state)
        bound = 1.0 / math.sqrt(self.d_in)
        _uniform_(self.weight, bound, generator)
        if self.bias is not None:
            _uniform_(self.bias, bound, generator)

    def _bias(self, dtype: torch.dtype) -> Tensor | None:
        return None if self.bias is None else self.bias.to(dtype)

    def forward_all(self, x: Tensor) -> Tensor:
        """Every expert on every token: (..., d_in) -> (..., m, d_out)."""
        self._check_input(x)
        weight = self.weight.to(x.dtype)
        m, d_in, d_out = self.n_experts, self.d_in, self.d_out
        out = (x @ weight.permute(1, 0, 2).reshape(d_in, m * d_out)).unflatten(
            -1, (m, d_out)
        )
        bias = self._bias(x.dtype)
        return out if bias is None else out + bias

    def forward_batched(self, x: Tensor) -> Tensor:
        """Expert ``i`` on slab ``i``: (m, T, d_in) -> (m, T, d_out)."""
        self._check_input(x)
        out = torch.bmm(x, self.weight.to(x.dtype))
        bias = self._bias(x.dtype)
        return out if bias is None else out + bias.unsqueeze(1)

    def _params(self) -> tuple[Tensor, ...]:
        return (self.weight,) if self.bias is None else (self.weight, self.bias)

    def _expert_forward(self, params: tuple[Tensor, ...], x: Tensor) -> Tensor:
        out = x @ params[0]
        return out + params[1] if len(params) > 1 else out

    def _forward_offsets(self, x: Tensor, offsets: Tensor, rows: Tensor) -> Tensor:
        out = torch._grouped_mm(x, self.weight.to(x.dtype), offs=offsets)
        bias = self._bias(x.dtype)
        return out if bias is None else out + bias[rows]

    def extra_repr(self) -> str:
        """Sizes."""
        return (
            f"n_experts={self.n_experts}, d_in={self.d_in}, d_out={self.d_out}, "
            f"bias={self.bias is not None}"
        )


class SharedExperts(ExpertMLP):
    """Always-on shared experts: a dense MLP on every token, added unweighted.

    ``forward(x) = sum_s E^shared_s(x)`` over ``n_shared`` MLP experts
    (DeepSeekMoE; DeepSeek-V3's inference code adds the shared output with
    weight 1, routing.md section 2.7). The sum of ``n_shared`` MLPs of width
    ``d_hidden`` is computed as one MLP of width ``n_shared * d_hidden``.

    Parameters
    ----------
    d_model : int
        Input and output features.
    d_hidden : int
        Hidden width of each shared expert.
    n_shared : int, default=1
        Number of shared experts ``m_s``.
    activation : {"relu", "gelu", "silu", "tanh", "identity"}, default="relu"
        Hidden activation.
    dtype : torch.dtype, optional
        Dtype of the weights (float32 by default).
    random_state : int or None, default=None
        Seed of the initialisation.

    Examples
    --------
    >>> import torch
    >>> shared = SharedExperts(8, 16, n_shared=2, random_state=0)
    >>> shared(torch.zeros(3, 8)).shape
    torch.Size([3, 8])
    """

    def __init__(
        self,
        d_model: int,
        d_hidden: int,
        n_shared: int = 1,
        activation: str = "relu",
        dtype: torch.dtype | None = None,
        *,
        random_state: int | None = None,
    ) -> None:
        super().__init__(
            n_shared, d_model, d_hidden, activation, dtype, random_state=random_state
        )

    @property
    def n_shared(self) -> int:
        """Number of shared experts ``m_s``."""
        return self.n_experts

    def forward(self, x: Tensor) -> Tensor:
        """``sum_s E^shared_s(x)``: (..., d) -> (..., d)."""
        return self.forward_sum(x)


def _check_routing(x: Tensor, routing: Routing, experts: Any) -> Tensor:
    x3 = as_groups(x)
    if routing.combine.shape[:2] != x3.shape[:2]:
        raise ValueError(
            f"x has (B, n) = {tuple(x3.shape[:2])} but the routing covers "
            f"{tuple(routing.combine.shape[:2])}."
        )
    if routing.combine.shape[-1] != experts.n_experts:
        raise ValueError(
            f"The routing has {routing.combine.shape[-1]} experts; the experts "
            f"module has {experts.n_experts}."
        )
    return x3


def combine_all(experts: BatchedExperts, x: Tensor, routing: Routing) -> Tensor:
    """``sum_i combine[t, i] E_i(x_t)`` with every expert on every token.

    Parameters
    ----------
    experts : BatchedExperts
        The ``m`` routed experts.
    x : Tensor of shape (B, n, d) or (n, d)
        Tokens.
    routing : Routing
        The router's decision for ``x``.

    Returns
    -------
    Tensor of shape (B, n, d_out)
        In float32 (float64 for a float64 ``x``).
    """
    x3 = _check_routing(x, routing, experts)
    acc = _accumulation_dtype(x3.dtype)
    out = experts.forward_all(x3)
    return torch.einsum("bnm,bnmo->bno", routing.combine.to(acc), out.to(acc))


def combine_sorted(
    experts: BatchedExperts,
    x: Tensor,
    routing: Routing,
    *,
    method: str = "auto",
) -> Tensor:
    """``sum_i combine[t, i] E_i(x_t)`` over the dispatched pairs, sorted by expert.

    The dispatched (token, expert) pairs of all ``B`` groups are taken from
    ``routing.dispatch`` (so fixed- and variable-K routers are served
    alike), stably sorted by expert (within an expert the rows stay in
    group-then-token order), counted with ``bincount``; the rows are
    gathered, passed through ``experts.forward_grouped``, multiplied by
    their ``combine`` weight and added back with ``index_add_`` in float32.

    Parameters
    ----------
    experts : BatchedExperts
        The ``m`` routed experts.
    x : Tensor of shape (B, n, d) or (n, d)
        Tokens.
    routing : Routing
        The router's decision for ``x``.
    method : {"auto", "grouped_mm", "padded", "loop"}, default="auto"
        How the experts run on the sorted rows
        (:meth:`BatchedExperts.forward_grouped`).

    Returns
    -------
    Tensor of shape (B, n, d_out)
        In float32 (float64 for a float64 ``x``).

    Notes
    -----
    Host synchronisations: one for the number of dispatched pairs
    (``nonzero``); the ``"loop"`` path (and ``"padded"`` under a dropless
    routing) reads the per-expert counts on the host as well. With a
    capacity ``C`` the padded buffer holds ``B * C`` rows per expert and
    ``"grouped_mm"`` needs no count on the host. ``index_add_`` on CUDA
    adds with atomics: call ``torch.use_deterministic_algorithms(True)``
    for bit-for-bit repeatable sums.
    """
    x3 = _check_routing(x, routing, experts)
    batch, n, d = x3.shape
    m = routing.combine.shape[-1]
    acc = _accumulation_dtype(x3.dtype)
    pairs = routing.dispatch.reshape(-1).nonzero().squeeze(1)  # (b*n + t)*m + i
    expert = pairs % m
    order = torch.argsort(expert, stable=True)
    pairs, expert = pairs[order], expert[order]
    token = pairs // m
    counts = torch.bincount(expert, minlength=m)
    weight = routing.combine.reshape(-1)[pairs].to(acc)
    rows = x3.reshape(batch * n, d).index_select(0, token)
    max_count = None if routing.capacity is None else batch * routing.capacity
    out = experts.forward_grouped(rows, counts, max_count=max_count, method=method)
    y = torch.zeros(batch * n, out.shape[-1], dtype=acc, device=x3.device)
    y = y.index_add(0, token, out.to(acc) * weight.unsqueeze(1))
    return y.view(batch, n, -1)


def combine_einsum(experts: BatchedExperts, x: Tensor, routing: Routing) -> Tensor:
    """``sum_i combine[t, i] E_i(x_t)`` by GShard's dense one-hot einsums.

    Builds the (B, n, m, C) dispatch and combine tensors (a token's slot in
    its expert's buffer is its rank among that expert's tokens, in token
    order), dispatches with ``"bnmc,bnd->mbcd"``, runs the experts on the
    (m, B*C, d) buffer and combines with ``"bnmc,mbcd->bnd"``. Memory grows
    like ``B n m C``: a reference for tests (n <= 4096) and the benchmark's
    baseline, not a path for large groups.

    Parameters
    ----------
    experts : BatchedExperts
        The ``m`` routed experts.
    x : Tensor of shape (B, n, d) or (n, d)
        Tokens.
    routing : Routing
        The router's decision for ``x``; ``C`` is ``routing.capacity`` or,
        for a dropless routing, the largest load.

    Returns
    -------
    Tensor of shape (B, n, d_out)
        In ``x``'s dtype.

    Raises
    ------
    ValueError
        When an expert's load exceeds ``routing.capacity``.
    """
    x3 = _check_routing(x, routing, experts)
    batch, n, _ = x3.shape
    m = routing.combine.shape[-1]
    dispatch = routing.dispatch
    max_load = int(dispatch.sum(dim=1).max()) if dispatch.numel() else 0
    capacity = max_load if routing.capacity is None else int(routing.capacity)
    if max_load > capacity:
        raise ValueError(
            f"An expert holds {max_load} tokens, more than the routing's capacity "
            f"{capacity}."
        )
    capacity = max(capacity, 1)
    slot = (torch.cumsum(dispatch.long(), dim=1) - 1).clamp(min=0)
    dispatch_oh = x3.new_zeros(batch, n, m, capacity)
    dispatch_oh.scatter_(3, slot.unsqueeze(-1), dispatch.unsqueeze(-1).to(x3.dtype))
    combine_oh = dispatch_oh * routing.combine.to(x3.dtype).unsqueeze(-1)
    buffer = torch.einsum("bnmc,bnd->mbcd", dispatch_oh, x3)
    out = experts.forward_batched(buffer.reshape(m, batch * capacity, -1))
    out = out.reshape(m, batch, capacity, -1)
    return torch.einsum("bnmc,mbcd->bnd", combine_oh, out)


def choose_impl(experts: Any, n_tokens: int) -> str:
    """The compute path of ``impl="auto"`` for ``n_tokens`` tokens (all groups).

    ``"all"`` when computing every expert on every token is cheap:
    ``m * width <= 4096`` (the toolkit's small linear, polynomial and MLP
    experts) or ``n_tokens * m * width <= 2**21`` (a few tokens); otherwise
    ``"sorted"``. ``width`` is the experts' hidden width (``d_out`` for
    linear experts).

    Parameters
    ----------
    experts : BatchedExperts
        The routed experts; ``experts.width`` (``d_out`` if absent) and
        ``experts.n_experts`` set the cost.
    n_tokens : int
        Tokens in all groups together.

    Returns
    -------
    {"all", "sorted"}
        The compute path.

    Examples
    --------
    >>> choose_impl(LinearExperts(4, 3, 1), 100_000)
    'all'
    >>> choose_impl(ExpertMLP(64, 8, 2048), 16_384)
    'sorted'
    """
    width = int(getattr(experts, "width", experts.d_out))
    size = experts.n_experts * width
    if size <= _ALL_MAX_EXPERT_WIDTH or n_tokens * size <= _ALL_MAX_ELEMENTS:
        return "all"
    return "sorted"


class MoELayer(nn.Module):
    """A router, ``m`` routed experts and optional shared experts.

    ``forward(x)`` returns ``(y, routing)`` with
    ``y_t = sum_s E^shared_s(x_t) + sum_i combine[t, i] E_i(x_t)``
    (routing.md section 0; the residual connection is the caller's). A token
    whose every assignment was dropped gets only the shared output (0
    without shared experts).

    Parameters
    ----------
    router : Router or callable
        Maps ``x`` (B, n, d) to a :class:`Routing`; it computes in its own
        dtype (float32 for the routers as built).
    experts : BatchedExperts
        The routed experts (:class:`ExpertMLP`, :class:`LinearExperts`).
    shared_experts : nn.Module, optional
        Applied to every token and added with weight 1, e.g.
        :class:`SharedExperts`.
    impl : {"auto", "all", "sorted", "einsum"}, default="auto"
        Compute path: ``"all"`` (:func:`combine_all`), ``"sorted"``
        (:func:`combine_sorted`), ``"einsum"`` (:func:`combine_einsum`, a
        reference and benchmark baseline) or ``"auto"``
        (:func:`choose_impl`). The path never changes which tokens are kept.

    Notes
    -----
    The experts compute in ``x``'s dtype (bf16 allowed); the weighted sum
    over experts is accumulated in float32 (float64 for float64 input) and
    cast to ``x``'s dtype at the end.

    Examples
    --------
    >>> import torch
    >>> from moestat.routing._base import Routing
    >>> class FirstExpert(torch.nn.Module):
    ...     def forward(self, x):
    ...         combine = torch.zeros(*x.shape[:-1], 2)
    ...         combine[..., 0] = 1.0
    ...         return Routing(combine, combine, combine > 0, combine)
    >>> layer = MoELayer(FirstExpert(), LinearExperts(2, 3, 3, random_state=0))
    >>> x = torch.ones(1, 4, 3)
    >>> y, routing = layer(x)
    >>> torch.allclose(y, layer.experts.forward_expert(0, x))
    True
    """

    def __init__(
        self,
        router: Any,
        experts: BatchedExperts,
        shared_experts: nn.Module | None = None,
        impl: str = "auto",
    ) -> None:
        super().__init__()
        if impl not in IMPLS:
            raise ValueError(f"Unknown impl {impl!r}; use one of {IMPLS}.")
        router_m = getattr(router, "n_experts", None)
        if router_m is not None and router_m != experts.n_experts:
            raise ValueError(
                f"The router routes to {router_m} experts but the experts module "
                f"has {experts.n_experts}."
            )
        self.router = router
        self.experts = experts
        self.shared_experts = shared_experts
        self.impl = impl

    def resolve_impl(self, x: Tensor, impl: str | None = None) -> str:
        """The compute path used for ``x`` (``impl`` overrides the layer's)."""
        impl = self.impl if impl is None else impl
        if impl not in IMPLS:
            raise ValueError(f"Unknown impl {impl!r}; use one of {IMPLS}.")
        if impl == "auto":
            x3 = as_groups(x)
            return choose_impl(self.experts, x3.shape[0] * x3.shape[1])
        return impl

    def routed(self, x: Tensor, routing: Routing, impl: str | None = None) -> Tensor:
        """``sum_i combine[t, i] E_i(x_t)`` for a given routing, (B, n, d_out)."""
        impl = self.resolve_impl(x, impl)
        if impl == "all":
            return combine_all(self.experts, x, routing)
        if impl == "sorted":
            return combine_sorted(self.experts, x, routing)
        return combine_einsum(self.experts, x, routing)

    def forward(self, x: Tensor, impl: str | None = None) -> tuple[Tensor, Routing]:
        """Route ``x`` (n, d) or (B, n, d) and apply the experts.

        Returns
        -------
        y : Tensor of the shape of ``x`` (with ``d_out`` features)
            In ``x``'s dtype.
        routing : Routing
            The router's decision.
        """
        routing = self.router(x)
        x3 = as_groups(x)
        y = self.routed(x3, routing, impl)
        if self.shared_experts is not None:
            y = y + self.shared_experts(x3).to(y.dtype)
        y = y.to(x.dtype)
        return (y if x.dim() == 3 else y.squeeze(0)), routing

    def extra_repr(self) -> str:
        """The compute path."""
        return f"impl={self.impl!r}"
