"""Models the tests share: paths to the bundled samples, and the smallest conv model as ONNX text."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx.parser
from onnx import numpy_helper

REPO = Path(__file__).resolve().parents[2]
SAMPLE_MODELS = REPO / "sample_models"
SAMPLE_NAMES = ("mlp", "resnet", "mobilenet", "vgg", "transformer")


TINY_CONV_TEXT = """
<ir_version: 8, opset_import: ["" : 17]>
tiny (float[N,3,8,8] x) => (float[N,4] y) {
  c1 = Conv <pads = [1,1,1,1]> (x, w1, b1)
  r1 = Relu (c1)
  g = GlobalAveragePool (r1)
  f = Flatten (g)
  y = Gemm <transB = 1> (f, w2, b2)
}
"""


def make_tiny_conv(seed: int = 0) -> onnx.ModelProto:
    """Conv-Relu-GAP-Gemm with random weights: the smallest model that exercises the pipeline."""
    import numpy as np
    from onnx import numpy_helper

    rng = np.random.default_rng(seed)
    model = onnx.parser.parse_model(TINY_CONV_TEXT)
    weights = {
        "w1": rng.standard_normal((6, 3, 3, 3)).astype("float32"),
        "b1": rng.standard_normal(6).astype("float32"),
        "w2": rng.standard_normal((4, 6)).astype("float32"),
        "b2": rng.standard_normal(4).astype("float32"),
    }
    for name, array in weights.items():
        model.graph.initializer.append(numpy_helper.from_array(array, name))
    onnx.checker.check_model(model, full_check=True)
    return model


def text_model(text: str, opset: int = 20, **weights: np.ndarray) -> onnx.ModelProto:
    """Parse ONNX text whose weights are declared as graph inputs, then make them initializers."""
    model = onnx.parser.parse_model(f'<ir_version: 10, opset_import: ["" : {opset}]>' + text)
    keep = [v for v in model.graph.input if v.name not in weights]
    del model.graph.input[:]
    model.graph.input.extend(keep)
    for name, value in weights.items():
        model.graph.initializer.append(numpy_helper.from_array(value, name))
    onnx.checker.check_model(model, full_check=True)
    return model


def rand(*shape: int, seed: int = 0, positive: bool = False) -> np.ndarray:
    value = np.random.default_rng(seed + sum(shape)).standard_normal(shape).astype(np.float32)
    return np.abs(value) + 0.5 if positive else value


def cnn_model() -> onnx.ModelProto:
    """Conv+BN+PRelu, per-channel Mul, global pool, Gemm(transB=1), Gemm(transB=0), MatMul+Add."""
    return text_model("""
    g (float[N, 2, 6, 6] x, float[4, 2, 3, 3] cw, float[4] cb, float[4] s, float[4] b, float[4] mean,
       float[4] var, float[4, 1, 1] slope, float[1, 4, 1, 1] chscale, float[5, 4] g1w, float[5] g1b,
       float[5, 6] g2w, float[6] g2b, float[6, 3] mw, float[3] mb) => (float[N, 3] y) {
       [conv] c = Conv<pads = [1, 1, 1, 1]>(x, cw, cb)
       [bn] n = BatchNormalization(c, s, b, mean, var)
       [prelu] p = PRelu(n, slope)
       [scale] q = Mul(p, chscale)
       [gap] pooled = GlobalAveragePool(q)
       [flatten] f = Flatten(pooled)
       [fc1] h1 = Gemm<transB = 1>(f, g1w, g1b)
       [fc2] h2 = Gemm(h1, g2w, g2b)
       [mm] h3 = MatMul(h2, mw)
       [bias] y = Add(h3, mb)
    }""", cw=rand(4, 2, 3, 3), cb=rand(4), s=rand(4, positive=True), b=rand(4, seed=1), mean=rand(4, seed=2),
        var=rand(4, seed=3, positive=True), slope=rand(4, 1, 1, seed=4), chscale=rand(1, 4, 1, 1, seed=5),
        g1w=rand(5, 4), g1b=rand(5), g2w=rand(5, 6), g2b=rand(6), mw=rand(6, 3), mb=rand(3))


def transformer_block() -> onnx.ModelProto:
    return text_model("""
    g (float[N, 4, 8] x, float[8] lnw, float[8] lnb, float[8, 8] wq, float[8] bq, float[8, 16] w1,
       float[16, 8] w2) => (float[N, 4, 8] y) {
       [ln] n = LayerNormalization<axis = -1>(x, lnw, lnb)
       [q_proj] qm = MatMul(n, wq)
       [q_bias] q = Add(qm, bq)
       [up] u = MatMul(q, w1)
       [act] a = Gelu(u)
       [down] d = MatMul(a, w2)
       [residual] y = Add(x, d)
    }""", lnw=rand(8, positive=True), lnb=rand(8), wq=rand(8, 8), bq=rand(8), w1=rand(8, 16), w2=rand(16, 8))


H17 = '<ir_version: 8, opset_import: ["" : 17]>'


def block(i: int, x: str, c: int = 8, mid: int = 6) -> tuple[str, str]:
    """A basic residual block on ``x``: declarations and node lines; output a{i}."""
    decl = (f"float[{mid},{c},3,3] wa{i}, float[{mid}] sa{i}, float[{mid}] ba{i}, float[{mid}] ma{i}, float[{mid}] vara{i}, "
            f"float[{c},{mid},3,3] wb{i}, float[{c}] sb{i}, float[{c}] bb{i}, float[{c}] mb{i}, float[{c}] varb{i}")
    nodes = f"""
  ca{i} = Conv <pads=[1,1,1,1]> ({x}, wa{i})
  ta{i} = BatchNormalization (ca{i}, sa{i}, ba{i}, ma{i}, vara{i})
  ra{i} = Relu (ta{i})
  cb{i} = Conv <pads=[1,1,1,1]> (ra{i}, wb{i})
  tb{i} = BatchNormalization (cb{i}, sb{i}, bb{i}, mb{i}, varb{i})
  a{i} = Add ({x}, tb{i})"""
    return decl, nodes


def chain(n: int, output_is_add: bool = False) -> str:
    decls, body, x = [], [], "r0"
    for i in range(1, n + 1):
        decl, nodes = block(i, x)
        decls.append(decl)
        body.append(nodes)
        x = f"a{i}"
    tail = "" if output_is_add else f"\n  r = Relu ({x})\n  y = Conv (r, wh)"
    out = "float[1,8,8,8] " + x if output_is_add else "float[1,4,8,8] y"
    return f"""{H17}
g (float[1,3,8,8] x) => ({out}) <float[8,3,3,3] w0, float[4,8,1,1] wh, {', '.join(decls)}>
{{
  r0 = Conv <pads=[1,1,1,1]> (x, w0){''.join(body)}{tail}
}}"""
