"""Gradient cases for every public op, written once for backprop and for PyTorch.

Each case is a function of (F, *tensors) where F is `backprop` or the PyTorch shim in
torch_reference.py, plus distinct non-square input shapes. Inputs are asymmetric random values,
kept off kinks (0 for relu/abs, ties for max) and positive where an op needs it.
"""

from dataclasses import dataclass, field

import numpy as np

import backprop as bp


@dataclass(frozen=True)
class Case:
    op: str  # the op in bp.ops.OPS that this case checks
    fn: object  # fn(F, *tensors) -> tensor
    shapes: tuple
    positive: bool = False  # inputs in (0.5, 2) instead of +-(0.2, 2)
    float_only: dict = field(default_factory=dict)

    def host_inputs(self, seed: int = 0) -> list[np.ndarray]:
        rng = np.random.default_rng(seed)
        arrays = []
        for shape in self.shapes:
            magnitude = rng.uniform(0.5 if self.positive else 0.2, 2.0, shape)
            sign = 1.0 if self.positive else rng.choice([-1.0, 1.0], shape)
            arrays.append(np.asarray(magnitude * sign))
        return arrays

    def inputs(self, dtype: str, seed: int = 0) -> list:
        return [bp.tensor(a, dtype=dtype, requires_grad=True) for a in self.host_inputs(seed)]


CASES = {
    "add": Case("add", lambda F, a, b: a + b, ((3, 4), (4,))),
    "add_scalar": Case("add", lambda F, a: 2.5 + a + 1, ((2, 3),)),
    "sub": Case("sub", lambda F, a, b: a - b, ((3, 1), (3, 4))),
    "sub_scalar": Case("sub", lambda F, a: 3.0 - a - 0.5, ((2, 3),)),
    "mul": Case("mul", lambda F, a, b: a * b, ((2, 3, 4), (3, 1))),
    "mul_scalar": Case("mul", lambda F, a: 0.5 * a * 3, ((2, 3),)),
    "div": Case("div", lambda F, a, b: a / b, ((3, 4), (4,)), positive=True),
    "div_scalar": Case("div", lambda F, a: 2.0 / a / 3.0, ((2, 3),), positive=True),
    "pow": Case("pow", lambda F, a, b: a**b, ((3, 4), (1, 4)), positive=True),
    "pow_scalar": Case("pow", lambda F, a: a**3 + 2.0**a, ((2, 3),), positive=True),
    "neg": Case("neg", lambda F, a: -a, ((3, 2),)),
    "matmul": Case("matmul", lambda F, a, b: a @ b, ((3, 4), (4, 5))),
    "matmul_batched": Case("matmul", lambda F, a, b: a @ b, ((2, 3, 4), (4, 5))),
    "matmul_broadcast_batch": Case("matmul", lambda F, a, b: a @ b, ((2, 1, 3, 4), (3, 4, 2))),
    "matmul_vector_left": Case("matmul", lambda F, a, b: a @ b, ((4,), (2, 4, 3))),
    "matmul_vector_right": Case("matmul", lambda F, a, b: a @ b, ((2, 3, 4), (4,))),
    "matmul_vectors": Case("matmul", lambda F, a, b: a @ b, ((4,), (4,))),
    "linear": Case("linear", lambda F, x, w, b: F.linear(x, w, b), ((5, 3), (3, 4), (4,))),
    "linear_no_bias": Case("linear", lambda F, x, w: F.linear(x, w), ((5, 3), (3, 2))),
    "linear_sigmoid": Case("linear", lambda F, x, w, b: F.linear(x, w, b, "sigmoid"), ((5, 3), (3, 4), (4,))),
    "linear_tanh": Case("linear", lambda F, x, w, b: F.linear(x, w, b, "tanh"), ((4, 3), (3, 2), (2,))),
    "linear_relu": Case("linear", lambda F, x, w: F.linear(x, w, None, "relu"), ((6, 3), (3, 4))),
    "permute": Case("permute", lambda F, a: F.permute(a, (2, 0, 1)), ((2, 3, 4),)),
    "transpose": Case("transpose", lambda F, a: F.transpose(a, 0, 2), ((2, 3, 4),)),
    "mT": Case("transpose", lambda F, a: a.mT, ((2, 3, 4),)),
    "reshape": Case("reshape", lambda F, a: F.reshape(a, (4, 6)), ((2, 3, 4),)),
    "broadcast_to": Case("broadcast_to", lambda F, a: F.broadcast_to(a, (2, 3, 4)), ((3, 1),)),
    "sum_all": Case("sum", lambda F, a: F.sum(a), ((3, 4),)),
    "sum_axis": Case("sum", lambda F, a: F.sum(a, axis=1), ((2, 3, 4),)),
    "sum_axes_keepdims": Case("sum", lambda F, a: F.sum(a, axis=(0, 2), keepdims=True), ((2, 3, 4),)),
    "mean": Case("mean", lambda F, a: F.mean(a, axis=0), ((3, 4),)),
    "mean_all": Case("mean", lambda F, a: F.mean(a), ((2, 3),)),
    "max": Case("max", lambda F, a: F.max(a, axis=1), ((3, 4),)),
    "max_all_keepdims": Case("max", lambda F, a: F.max(a, axis=None, keepdims=True), ((2, 3),)),
    "logsumexp": Case("logsumexp", lambda F, a: F.logsumexp(a, axis=1), ((3, 4),)),
    "logsumexp_keepdims": Case("logsumexp", lambda F, a: F.logsumexp(a, axis=0, keepdims=True), ((3, 4),)),
    "exp": Case("exp", lambda F, a: F.exp(a), ((3, 4),)),
    "log": Case("log", lambda F, a: F.log(a), ((3, 4),), positive=True),
    "sqrt": Case("sqrt", lambda F, a: F.sqrt(a), ((3, 4),), positive=True),
    "abs": Case("abs", lambda F, a: F.abs(a), ((3, 4),)),
    "tanh": Case("tanh", lambda F, a: F.tanh(a), ((3, 4),)),
    "sigmoid": Case("sigmoid", lambda F, a: F.sigmoid(a), ((3, 4),)),
    "relu": Case("relu", lambda F, a: F.relu(a), ((3, 4),)),
    "leaky_relu": Case("leaky_relu", lambda F, a: F.leaky_relu(a, 0.1), ((3, 4),)),
    "softmax": Case("softmax", lambda F, a: F.softmax(a, axis=-1), ((3, 4),)),
    "softmax_axis0": Case("softmax", lambda F, a: F.softmax(a, axis=0), ((3, 4),)),
    "log_softmax": Case("log_softmax", lambda F, a: F.log_softmax(a, axis=1), ((3, 4),)),
    "maximum": Case("maximum", lambda F, a, b: F.maximum(a, b), ((3, 4), (4,))),
    "minimum": Case("minimum", lambda F, a, b: F.minimum(a, b), ((3, 1), (3, 4))),
    "where": Case("where", lambda F, a, b: F.where(a > 0.0, a, b * b), ((3, 4), (4,))),
    "clip": Case("clip", lambda F, a: F.clip(a, -1.0, 1.1), ((3, 4),)),
    "astype": Case("astype", lambda F, a: F.astype(a, "float64") ** 2, ((3, 4),)),
    "getitem": Case("getitem", lambda F, a: a[1:, ::2], ((3, 4),)),
    "getitem_int_none": Case("getitem", lambda F, a: a[None, 1, :, 2:], ((2, 3, 4),)),
    "take": Case("take", lambda F, a: F.take(a, [2, 0, 2, 3], axis=1), ((3, 4),)),
    "take_axis0": Case("take", lambda F, a: F.take(a, [1, 1, 0], axis=0), ((2, 3, 4),)),
    "take_negative": Case("take", lambda F, a: F.take(a, [-1, 0, -4, 2, -1], axis=1), ((3, 4),)),
    "concat": Case("concat", lambda F, a, b: F.concat([a, b], axis=1), ((3, 2), (3, 4))),
    "stack": Case("stack", lambda F, a, b: F.stack([a, b], axis=1), ((3, 4), (3, 4))),
}
