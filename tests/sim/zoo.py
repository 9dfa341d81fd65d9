"""Small held-out models that exercise Paddle-Lite's fusions and placements beyond the fixtures, built with Paddle
(legacy program format) at test time: a squeezenet-like net (fire modules: branches joined by concat), an
activation zoo (conv + leaky_relu / hard_swish / sigmoid / tanh, x * sigmoid(x), prelu, a channel shuffle,
nearest upsampling, split, squeeze/unsqueeze, fc + relu, transposed matmul, transpose-softmax-transpose), a
residual tree (conv+bn, 1x1 conv + add, conv -> 1x1 conv) and a small attention block.

Some activations are appended as raw ops: Paddle 3.x's functional API refuses legacy static Variables for them.
Only the graph matters here (tests compare optimised programs), so weights are Paddle's seeded initialisers.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("FLAGS_enable_pir_api", "0")

import paddle
import paddle.nn as nn
import paddle.nn.functional as F


def _op(op_type: str, inputs: dict[str, Any], **attrs: Any) -> Any:
    helper = paddle.base.layer_helper.LayerHelper(op_type)
    out = helper.create_variable_for_type_inference("float32")
    helper.append_op(type=op_type, inputs=inputs, outputs={"Out": out}, attrs=attrs)
    return out


def _matmul(a: Any, b: Any, trans_y: bool = False) -> Any:
    return _op("matmul_v2", {"X": a, "Y": b}, trans_x=False, trans_y=trans_y)


def _fire(x: Any, squeeze: int, expand: int) -> Any:
    s = F.relu(nn.Conv2D(x.shape[1], squeeze, 1)(x))
    return paddle.concat(
        [F.relu(nn.Conv2D(squeeze, expand, 1)(s)), F.relu(nn.Conv2D(squeeze, expand, 3, padding=1)(s))], axis=1
    )


def squeezenet(x: Any) -> list[Any]:
    h = F.max_pool2d(F.relu(nn.Conv2D(3, 16, 3, stride=2)(x)), 3, 2)
    h = F.max_pool2d(_fire(_fire(h, 8, 16), 8, 16), 3, 2)
    h = F.adaptive_avg_pool2d(F.relu(nn.Conv2D(64, 10, 1)(_fire(h, 16, 32))), 1)
    return [paddle.reshape(h, [-1, 10])]


def activations(x: Any) -> list[Any]:
    a = F.leaky_relu(nn.Conv2D(3, 8, 3, padding=1)(x), 0.1)
    b = F.hardswish(nn.Conv2D(8, 8, 3, padding=1, groups=8)(a))
    c = _op("sigmoid", {"X": nn.Conv2D(8, 8, 1)(b)})
    d = _op("tanh", {"X": nn.Conv2D(8, 8, 1)(c)})
    e = F.relu(d + a)
    f = e * _op("sigmoid", {"X": e})
    g = paddle.scale(f, 2.0, 0.5)
    h = nn.PReLU(8)(_op("hard_sigmoid", {"X": g}, slope=0.2, offset=0.5) * f)
    s = paddle.reshape(paddle.transpose(paddle.reshape(h, [-1, 2, 4, 16, 16]), [0, 2, 1, 3, 4]), [-1, 8, 16, 16])
    u1, u2 = paddle.split(F.interpolate(s, scale_factor=2, mode="nearest"), 2, axis=1)
    w = paddle.squeeze(paddle.mean(u1 * u2 + u1, axis=[2, 3], keepdim=True), [2, 3])
    m = nn.Linear(16, 6)(F.relu(nn.Linear(4, 16)(w)))
    q = paddle.unsqueeze(m, [1])
    attention = F.softmax(paddle.transpose(_matmul(q, q, trans_y=True), [0, 2, 1]), axis=-1)
    return [paddle.transpose(attention, [0, 2, 1]), m]


def residual_tree(x: Any) -> list[Any]:
    a = F.relu(nn.BatchNorm2D(16)(nn.Conv2D(3, 16, 3, padding=1)(x)))
    c = F.relu(a + nn.BatchNorm2D(16)(nn.Conv2D(16, 16, 1)(a)))
    e = nn.Conv2D(32, 64, 1)(nn.Conv2D(16, 32, 1)(c))
    return [F.relu(e + nn.Conv2D(64, 64, 1)(e))]


def attention(x: Any) -> list[Any]:
    h = nn.LayerNorm(12)(paddle.reshape(x, [-1, 16, 12]))
    q, k = nn.Linear(12, 12)(h), nn.Linear(12, 12)(h)
    a = F.softmax(paddle.scale(_matmul(q, k, trans_y=True), 0.3))
    o = nn.Linear(24, 12)(_op("gelu", {"X": nn.Linear(12, 24)(_matmul(a, h))}, approximate=False)) + h
    return [F.softmax(nn.Linear(12, 5)(paddle.mean(o, axis=1)))]


MODELS: dict[str, tuple[Callable[[Any], list[Any]], list[int]]] = {
    "zoo_squeezenet": (squeezenet, [1, 3, 64, 64]),
    "zoo_activations": (activations, [1, 3, 16, 16]),
    "zoo_residual_tree": (residual_tree, [1, 3, 16, 16]),
    "zoo_attention": (attention, [1, 192]),
}


def build(name: str, directory: Path) -> Path:
    """Write model `name` as `directory/name/model.pdmodel` + `model.pdiparams` (legacy format)."""
    make, shape = MODELS[name]
    target = directory / name
    was_dynamic = paddle.in_dynamic_mode()  # the test process shares one paddle: leave its mode as found
    with paddle.pir_utils.OldIrGuard():
        paddle.enable_static()
        try:
            paddle.seed(0)
            main, startup = paddle.static.Program(), paddle.static.Program()
            with paddle.static.program_guard(main, startup):
                x = paddle.static.data("x", shape, "float32")
                outputs = make(x)
            exe = paddle.static.Executor(paddle.CPUPlace())
            exe.run(startup)
            target.mkdir(parents=True, exist_ok=True)
            paddle.static.save_inference_model(str(target / "model"), [x], outputs, exe, program=main)
        finally:
            if was_dynamic:
                paddle.disable_static()
    return target
