"""The frame graph: a camera frame in, labels at the frame's size out, the per-pixel work inside.

An app hands the model the frame as it has it, uint8 (B, H, W, 3) RGB of any size, and gets
uint8 (B, H, W) train ids back; only the frame's bytes go to the device and the label map's
bytes come back. Around the network (the "core": normalised NCHW float in, logits at feature
resolution out) the graph holds:

- **pre**: the frame resized to the run size with Pillow's antialiased bilinear filter (the
  runtime's, calibration's and the PyTorch reference's resize), then normalised. The run size
  is the input ``run_size``: the trained scale, recorded as the model's inference size; a 0
  keeps the frame's side.
- **post**: the rule ``diga eval`` scores: logits upsampled bilinearly (align_corners) from
  the feature grid to the frame's size, then the argmax. Two exact implementations:
  ``postprocess_cells`` (CPUs: the work grows with the length of the class borders, not the
  frame's area) and ``postprocess_dense`` (GPUs: every pixel, no data-dependent shapes).
- a second output, ``logits`` (B, C, h, w) at the feature grid: what confidence and
  uncertainty maps come from (upsampled on the host when an app asks; otherwise not fetched).

One rule, three flavours, each with what its backend runs well:

- ``onnxruntime``: inputs ``image`` (the frame) and ``run_size``; Resize with antialias (Pillow's
  filter, within one grey level); cells.
- ``openvino``: its CPU plugin ignores Resize's antialias (and its Pillow mode runs 20x slower
  than Pillow), so the app resizes the frame to the run size with Pillow first, as diga's
  runtime and the C++ example do. Inputs ``image`` (at the run size) and ``out_size`` (the
  frame's size, the labels'); cells.
- ``tensorrt``: TensorRT has no antialias either; on a GPU Pillow's filter as gathers and sums
  costs little. Input ``image`` (the frame), the run size baked in (an engine runs at its
  trained scale); dense.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FLAVOURS = ("onnxruntime", "openvino", "tensorrt")
IMAGE, RUN_SIZE, OUT_SIZE = "image", "run_size", "out_size"
LABELS, LOGITS = "labels", "logits"


@dataclass
class GraphBuilder:
    """Nodes and constants of one part of the graph, with names under ``prefix``."""

    prefix: str
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    initializers: list[onnx.TensorProto] = field(default_factory=list)
    _count: int = 0

    def _name(self, hint: str) -> str:
        self._count += 1
        return f"{self.prefix}/{hint}_{self._count}"

    def const(self, value: Any, dtype: Any = np.int64) -> str:
        name = self._name("const")
        self.initializers.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op_type: str, *inputs: str, outputs: int = 1, name: str | None = None,
           **attrs: Any) -> Any:
        """Add a node; returns its output name (or names, for ``outputs`` > 1)."""
        node_name = self._name(op_type)
        outs = [name] if name and outputs == 1 else [f"{node_name}:{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=node_name, **attrs))
        return outs[0] if outputs == 1 else outs

    # small vocabulary
    def scalar(self, tensor: str, index: int) -> str:
        """Element ``index`` of a 1-D tensor, as a 0-D tensor."""
        return self.op("Gather", tensor, self.const(index), axis=0)

    def to_float(self, tensor: str) -> str:
        return self.op("Cast", tensor, to=TensorProto.FLOAT)

    def to_int(self, tensor: str) -> str:
        return self.op("Cast", tensor, to=TensorProto.INT64)

    def arange(self, count: str, dtype: int = TensorProto.INT64) -> str:
        """0, 1, ..., count - 1 (count a 0-D int64 tensor)."""
        out = self.op("Range", self.const(0), count, self.const(1))
        return out if dtype == TensorProto.INT64 else self.op("Cast", out, to=dtype)

    def unsqueeze(self, tensor: str, *axes: int) -> str:
        return self.op("Unsqueeze", tensor, self.const(list(axes)))


# ---------------------------------------------------------------- pre: frame -> network input


def size_or_image(b: GraphBuilder, image: str, size: str | None,
                  baked: tuple[int, int] | None = None) -> tuple[str, str]:
    """(the image's (H, W), a size) as int64 (2,) tensors: the input ``size`` where each 0
    takes the image's side, or ``baked``, or the image's own size."""
    own = b.op("Shape", image, start=1, end=3)
    if baked is not None:
        return own, b.const(list(baked))
    if size is None:
        return own, own
    return own, b.op("Where", b.op("Greater", size, b.const(0)), size, own)


def pillow_weights(b: GraphBuilder, n_in: str, n_out: str) -> tuple[str, str]:
    """Pillow's antialiased bilinear filter from ``n_in`` to ``n_out`` samples (0-D int64):
    tap indices (n_out, K) and normalised weights (n_out, K), as ``ImagingResample`` makes
    them: support 1 stretched by the scale when downsampling, centres at half pixels, taps
    beyond the image dropped and the rest renormalised."""
    f_in, f_out = b.to_float(n_in), b.to_float(n_out)
    scale = b.op("Div", f_in, f_out)
    filterscale = b.op("Max", scale, b.const(1.0, np.float32))
    support = filterscale  # bilinear: support 1
    taps = b.op("Add", b.op("Mul", b.to_int(b.op("Ceil", support)), b.const(2)), b.const(1))
    centre = b.op("Mul", b.op("Add", b.arange(n_out, TensorProto.FLOAT),
                              b.const(0.5, np.float32)), scale)  # (n_out,)
    low = b.op("Floor", b.op("Add", b.op("Sub", centre, support), b.const(0.5, np.float32)))
    low = b.op("Max", low, b.const(0.0, np.float32))
    high = b.op("Floor", b.op("Add", b.op("Add", centre, support), b.const(0.5, np.float32)))
    high = b.op("Min", high, f_in)
    k = b.unsqueeze(b.arange(taps, TensorProto.FLOAT), 0)  # (1, K)
    index = b.op("Add", b.unsqueeze(low, 1), k)  # (n_out, K)
    valid = b.op("Less", index, b.unsqueeze(high, 1))
    x = b.op("Mul", b.op("Add", b.op("Sub", index, b.unsqueeze(centre, 1)),
                         b.const(0.5, np.float32)), b.op("Reciprocal", filterscale))
    weight = b.op("Relu", b.op("Sub", b.const(1.0, np.float32), b.op("Abs", x)))
    weight = b.op("Where", valid, weight, b.const(0.0, np.float32))
    weight = b.op("Div", weight, b.op("ReduceSum", weight, b.const([1]), keepdims=1))
    last = b.op("Sub", f_in, b.const(1.0, np.float32))
    index = b.to_int(b.op("Min", index, last))
    return index, weight


def _filter_axis(b: GraphBuilder, x: str, index: str, weight: str, axis: int) -> str:
    """Apply (n_out, K) taps along ``axis`` of an NHWC float tensor."""
    gathered = b.op("Gather", x, index, axis=axis)  # axis -> (n_out, K)
    w_axes = [a for a in range(5) if a not in (axis, axis + 1)]
    w = b.unsqueeze(weight, *w_axes)  # broadcast over the other axes
    return b.op("ReduceSum", b.op("Mul", gathered, w), b.const([axis + 1]), keepdims=0)


def preprocess(b: GraphBuilder, image: str, frame: str, run: str | None, flavour: str,
               mean: tuple[float, ...], std: tuple[float, ...]) -> str:
    """uint8 NHWC image -> normalised float NCHW at the run size (``run`` None: the image is
    at the run size already)."""
    if run is None:
        x = b.to_float(image)
    elif flavour == "onnxruntime":
        # onnxruntime's uint8 NHWC Resize with antialias is Pillow's filter (measured: within
        # one grey level on 0.04% of the values) and as fast as Pillow
        resized = b.op("Resize", image, "", "", run, mode="linear", antialias=1, axes=[1, 2],
                       coordinate_transformation_mode="half_pixel")
        x = b.to_float(resized)
    else:
        # the filter as gathers and weighted sums, rows first, rounded to grey levels as
        # Pillow's 8-bit resize rounds its result
        x = b.to_float(image)
        rows = pillow_weights(b, b.scalar(frame, 0), b.scalar(run, 0))
        x = _filter_axis(b, x, *rows, axis=1)
        cols = pillow_weights(b, b.scalar(frame, 1), b.scalar(run, 1))
        x = _filter_axis(b, x, *cols, axis=2)
        x = b.op("Clip", b.op("Round", x), b.const(0.0, np.float32), b.const(255.0, np.float32))
    nchw = b.op("Transpose", x, perm=[0, 3, 1, 2])
    m = b.const(np.asarray(mean, np.float32).reshape(1, 3, 1, 1) * 255.0, np.float32)
    s = b.const(np.asarray(std, np.float32).reshape(1, 3, 1, 1) * 255.0, np.float32)
    return b.op("Div", b.op("Sub", nchw, m), s)


# ---------------------------------------------------------------- post: logits -> labels


def _source_coordinates(b: GraphBuilder, n_out: str, n_in: str) -> tuple[str, str, str]:
    """align_corners sampling of ``n_in`` grid points at ``n_out`` pixels: for each pixel the
    lower grid index, the upper one and the weight of the upper one (torch's bilinear)."""
    f_in, f_out = b.to_float(n_in), b.to_float(n_out)
    one = b.const(1.0, np.float32)
    ratio = b.op("Div", b.op("Sub", f_in, one), b.op("Max", b.op("Sub", f_out, one), one))
    src = b.op("Mul", b.arange(n_out, TensorProto.FLOAT), ratio)  # (n_out,)
    last = b.op("Sub", n_in, b.const(1))
    lo = b.op("Min", b.to_int(b.op("Floor", src)), last)
    hi = b.op("Min", b.op("Add", lo, b.const(1)), last)
    return lo, hi, b.op("Sub", src, b.to_float(lo))


def postprocess_dense(b: GraphBuilder, logits: str, out_hw: str) -> str:
    """Every pixel: logits upsampled (align_corners) to the frame, then the argmax."""
    sizes = b.op("Concat", b.op("Shape", logits, start=0, end=2), out_hw, axis=0)
    up = b.op("Resize", logits, "", "", sizes, mode="linear",
              coordinate_transformation_mode="align_corners")
    return b.op("Cast", b.op("ArgMax", up, axis=1, keepdims=0), to=TensorProto.UINT8)


CANDIDATES = 3  # classes a border cell is interpolated over when no other class can win there


def postprocess_cells(b: GraphBuilder, logits: str, out_hw: str) -> str:
    """The same labels as ``postprocess_dense``, computed where the class can change only.

    - A pixel in a grid cell whose four corners share their argmax takes it: bilinear weights
      make a convex combination of the corner logit vectors, and the class that wins in every
      corner wins in the combination. Those pixels are one nearest-neighbour gather of the
      grid's argmax.
    - In the other cells, a class can win somewhere only if its largest corner value reaches
      ``max_c min_corners z_c`` (no pixel's best value is below that); where at most
      ``CANDIDATES`` classes do, the cell's pixels are interpolated over those alone.
    - The few cells with more contenders are interpolated over all classes.

    Border cells are visited as blocks of Ky x Kx pixels (the largest cell; slots past a
    smaller cell's end repeat its last row or column).
    """
    shape = b.op("Shape", logits)  # B, C, h, w
    classes, h, w = (b.scalar(shape, i) for i in (1, 2, 3))
    big_h, big_w = b.scalar(out_hw, 0), b.scalar(out_hw, 1)
    grid_argmax = b.op("ArgMax", logits, axis=1, keepdims=0)  # (B, h, w)
    y0, _, wy = _source_coordinates(b, big_h, h)  # (H,)
    x0, _, wx = _source_coordinates(b, big_w, w)  # (W,)

    # every pixel from its cell's top-left corner (a nearest Resize with align_corners and
    # floor picks it, as _source_coordinates does): right wherever the cell agrees
    small = b.op("Cast", b.unsqueeze(grid_argmax, 1), to=TensorProto.UINT8)  # (B, 1, h, w)
    sizes = b.op("Concat", b.op("Shape", small, start=0, end=2), out_hw, axis=0)
    fast = b.op("Resize", small, "", "", sizes, mode="nearest", nearest_mode="floor",
                coordinate_transformation_mode="align_corners")  # (B, 1, H, W)
    labels = b.op("Reshape", fast, b.const([-1]))  # flat (B * H * W,)

    # the first pixel row (column) of every grid row (column), and how many it has
    def extents(lo: str, n_grid: str) -> tuple[str, str]:
        grid = b.unsqueeze(b.arange(b.op("Add", n_grid, b.const(1))), 1)  # (n + 1, 1)
        first = b.op("ReduceSum", b.to_int(b.op("Less", b.unsqueeze(lo, 0), grid)),
                     b.const([1]), keepdims=0)  # (n + 1,): pixels before grid line i
        starts = b.op("Slice", first, b.const([0]), b.unsqueeze(n_grid, 0))
        ends = b.op("Slice", first, b.const([1]), b.unsqueeze(b.op("Add", n_grid, b.const(1)), 0))
        return starts, b.op("Sub", ends, starts)

    start_y, count_y = extents(y0, h)
    start_x, count_x = extents(x0, w)
    k_y, k_x = (b.op("Max", b.op("ReduceMax", c, keepdims=0), b.const(1)) for c in (count_y, count_x))

    # cells whose four corners do not all agree and that hold a pixel, as (b, i, j)
    down = b.op("Min", b.op("Add", b.arange(h), b.const(1)), b.op("Sub", h, b.const(1)))
    right = b.op("Min", b.op("Add", b.arange(w), b.const(1)), b.op("Sub", w, b.const(1)))
    a_d = b.op("Gather", grid_argmax, down, axis=1)
    a_r = b.op("Gather", grid_argmax, right, axis=2)
    a_dr = b.op("Gather", a_d, right, axis=2)
    same = b.op("And", b.op("And", b.op("Equal", grid_argmax, a_d),
                            b.op("Equal", grid_argmax, a_r)), b.op("Equal", grid_argmax, a_dr))
    holds = b.op("And", b.unsqueeze(b.op("Greater", count_y, b.const(0)), 1),
                 b.unsqueeze(b.op("Greater", count_x, b.const(0)), 0))  # (h, w)
    border = b.op("NonZero", b.op("And", b.op("Not", same), holds))  # (3, M)
    cells = [b.op("Gather", border, b.const(k), axis=0) for k in range(3)]  # b, i, j: (M,)

    table = b.op("Reshape", b.op("Transpose", logits, perm=[0, 2, 3, 1]),
                 b.op("Concat", b.const([-1]), b.unsqueeze(classes, 0), axis=0))  # (B*h*w, C)

    def corners(cell: list[str]) -> list[str]:
        """The four corner logit vectors of each cell: (M, C) each, z00, z01, z10, z11."""
        cb, ci, cj = cell
        row0 = b.op("Mul", b.op("Add", b.op("Mul", cb, h), ci), w)
        row1 = b.op("Mul", b.op("Add", b.op("Mul", cb, h), b.op("Gather", down, ci, axis=0)), w)
        col1 = b.op("Gather", right, cj, axis=0)
        return [b.op("Gather", table, b.op("Add", r, c), axis=0)
                for r in (row0, row1) for c in (cj, col1)]

    def block(cell: list[str]) -> tuple[str, str, str]:
        """Each cell's pixels: rows (M, Ky), columns (M, Kx), flat positions (M, Ky, Kx)."""
        cb, ci, cj = cell
        axes = []
        for starts, counts, index, k in ((start_y, count_y, ci, k_y), (start_x, count_x, cj, k_x)):
            first = b.unsqueeze(b.op("Gather", starts, index, axis=0), 1)  # (M, 1)
            last = b.op("Sub", b.op("Add", first, b.unsqueeze(
                b.op("Gather", counts, index, axis=0), 1)), b.const(1))
            axes.append(b.op("Min", b.op("Add", first, b.unsqueeze(b.arange(k), 0)), last))
        ys, xs = axes
        rows = b.op("Add", b.unsqueeze(b.op("Mul", cb, big_h), 1), ys)  # (M, Ky)
        flat = b.op("Add", b.unsqueeze(b.op("Mul", rows, big_w), 2), b.unsqueeze(xs, 1))
        return ys, xs, flat

    def scatter(flat_labels: str, flat: str, classes_at: str) -> str:
        """Write int64 classes (M, Ky, Kx) at flat positions (M, Ky, Kx)."""
        return b.op("ScatterElements", flat_labels, b.op("Reshape", flat, b.const([-1])),
                    b.op("Reshape", b.op("Cast", classes_at, to=TensorProto.UINT8), b.const([-1])),
                    axis=0)

    def interpolate_argmax(z: list[str], ys: str, xs: str) -> str:
        """argmax over the last axis of the bilinear blend of the corners z (M, K) over the
        block's pixels: (M, Ky, Kx) int64."""
        one = b.const(1.0, np.float32)
        fx = b.unsqueeze(b.op("Gather", wx, xs, axis=0), 2)  # (M, Kx, 1)
        gx = b.op("Sub", one, fx)
        z00, z01, z10, z11 = (b.unsqueeze(v, 1) for v in z)  # (M, 1, K)
        top = b.op("Add", b.op("Mul", z00, gx), b.op("Mul", z01, fx))  # (M, Kx, K)
        bottom = b.op("Add", b.op("Mul", z10, gx), b.op("Mul", z11, fx))
        fy = b.unsqueeze(b.op("Gather", wy, ys, axis=0), 2, 3)  # (M, Ky, 1, 1)
        top = b.unsqueeze(top, 1)  # (M, 1, Kx, K)
        value = b.op("Add", top, b.op("Mul", b.op("Sub", b.unsqueeze(bottom, 1), top), fy))
        return b.op("ArgMax", value, axis=3, keepdims=0)

    # every border cell over its candidates: the classes with the largest corner values. No
    # pixel's best value is below a bilinear lower bound: the largest corner minimum of one
    # class, or of the mean of the top two or three candidates (a mean of bilinear functions
    # is bilinear, so its minimum over the cell is at a corner); a class whose corners all
    # stay below that bound wins nowhere in the cell.
    z = corners(cells)
    pad = b.op("ConstantOfShape", b.op("Concat", b.op("Shape", z[0], start=0, end=1),
                                       b.const([CANDIDATES]), axis=0),
               value=numpy_helper.from_array(np.array([-1e30], np.float32)))
    z = [b.op("Concat", v, pad, axis=1) for v in z]  # (M, C + K): K classes at least
    best, candidates = b.op("TopK", b.op("Max", *z), b.const([CANDIDATES + 1]), axis=1,
                            outputs=2)  # by largest corner, (M, K + 1)
    candidates = b.op("Slice", candidates, b.const([0]), b.const([CANDIDATES]), b.const([1]))
    zc = [b.op("GatherElements", v, candidates, axis=1) for v in z]  # (M, K) each corner
    bounds = [b.op("ReduceMax", b.op("Min", *z), b.const([1]), keepdims=1)]  # (M, 1)
    for n in (2, 3):
        mean = [b.op("ReduceMean", b.op("Slice", v, b.const([0]), b.const([n]), b.const([1])),
                     b.const([1]), keepdims=1) for v in zc]
        bounds.append(b.op("Min", *mean))
    floor = b.op("Max", *bounds)
    easy = b.op("Less", b.op("Slice", best, b.const([CANDIDATES]), b.const([CANDIDATES + 1]),
                             b.const([1])), floor)  # (M, 1): no other class reaches the bound
    ys, xs, flat = block(cells)
    pick = interpolate_argmax(zc, ys, xs)  # (M, Ky, Kx) in 0..K-1
    offset = b.unsqueeze(b.op("Mul", b.arange(b.op("Shape", ys, start=0, end=1)),
                              b.const(CANDIDATES)), 1, 2)
    chosen = b.op("Gather", b.op("Reshape", candidates, b.const([-1])), b.op("Add", offset, pick))
    labels = scatter(labels, flat, chosen)

    # the cells where more classes contend: all of them (their labels above are replaced)
    hard = b.op("Reshape", b.op("NonZero", b.op("Not", b.op("Reshape", easy, b.const([-1])))),
                b.const([-1]))  # (Mh,)
    hard_cells = [b.op("Gather", c, hard, axis=0) for c in cells]
    ys, xs, flat = block(hard_cells)
    labels = scatter(labels, flat, interpolate_argmax(corners(hard_cells), ys, xs))
    return b.op("Reshape", labels, b.op("Concat", b.op("Shape", logits, start=0, end=1), out_hw,
                                        axis=0))


# ---------------------------------------------------------------- the whole graph


def frame_graph(core: onnx.ModelProto, flavour: str, mean: tuple[float, ...],
                std: tuple[float, ...], run_size: tuple[int, int] | None = None) -> onnx.ModelProto:
    """Wrap ``core`` (normalised float NCHW in, logits (B, C, h, w) at feature resolution out)
    into the frame graph of ``flavour`` (see the module's docstring for each one's inputs).

    Args:
        run_size: the run size baked into a ``tensorrt`` graph (None: the frame's own size);
            the other flavours take it as an input or from the image they are given.
    """
    if flavour not in FLAVOURS:
        raise ValueError(f"flavour must be one of {FLAVOURS}, got {flavour!r}")
    opset = next((o.version for o in core.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 18:
        raise ValueError(f"the frame graph needs opset 18 or newer, the core has {opset}")
    core = onnx.compose.add_prefix(core, "net/")
    core_in, core_out = core.graph.input[0].name, core.graph.output[0].name

    pre = GraphBuilder("pre")
    batch_dim = core.graph.input[0].type.tensor_type.shape.dim[0]
    batch = batch_dim.dim_value or "batch"  # a static core (--static) takes its batch only
    inputs = [helper.make_tensor_value_info(IMAGE, TensorProto.UINT8, [batch, "height", "width", 3])]
    if flavour == "onnxruntime":
        inputs.append(helper.make_tensor_value_info(RUN_SIZE, TensorProto.INT64, [2]))
        frame, run = size_or_image(pre, IMAGE, RUN_SIZE)
        out_hw = frame
    elif flavour == "openvino":  # the image comes at the run size; the labels at out_size
        inputs.append(helper.make_tensor_value_info(OUT_SIZE, TensorProto.INT64, [2]))
        frame, out_hw = size_or_image(pre, IMAGE, OUT_SIZE)
        run = None
    else:
        frame, run = size_or_image(pre, IMAGE, None, run_size)
        out_hw = frame
    x = preprocess(pre, IMAGE, frame, run, flavour, mean, std)
    pre.nodes.append(helper.make_node("Identity", [x], [core_in], name="pre/to_net"))

    post = GraphBuilder("post")
    build = postprocess_dense if flavour == "tensorrt" else postprocess_cells
    post.nodes.append(helper.make_node("Identity", [core_out], [LOGITS], name="post/logits"))
    labels = build(post, core_out, out_hw)
    post.nodes.append(helper.make_node("Identity", [labels], [LABELS], name="post/labels"))

    core_type = core.graph.output[0].type.tensor_type
    classes = core_type.shape.dim[1].dim_value if len(core_type.shape.dim) > 1 else 0
    outputs = [
        helper.make_tensor_value_info(LABELS, TensorProto.UINT8, [batch, "height", "width"]),
        helper.make_tensor_value_info(LOGITS, core_type.elem_type,
                                      [batch, classes or "classes", "grid_height", "grid_width"]),
    ]
    graph = helper.make_graph(
        [*pre.nodes, *core.graph.node, *post.nodes], "diga_frame", inputs, outputs,
        initializer=[*pre.initializers, *core.graph.initializer, *post.initializers])
    graph.value_info.extend(core.graph.value_info)
    model = helper.make_model(graph, opset_imports=list(core.opset_import),
                              ir_version=core.ir_version)
    model.functions.extend(core.functions)
    return model
