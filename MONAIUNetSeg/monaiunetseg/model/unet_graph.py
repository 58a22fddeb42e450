"""The bundle's MONAI UNet (one or several weights files) as one ONNX graph that outputs the mean foreground
probability, built from the state_dicts with numpy alone (no torch, no monai, no ``onnx`` package).

The graph mirrors ``monai.networks.nets.UNet`` layer by layer (``_create_block`` / ``ResidualUnit`` /
``Convolution`` with ``adn_ordering="NDA"``) and is rewritten for speed with the same numbers:

* batch norm (eval statistics) is folded into the preceding convolution;
* a one-parameter PReLU is ``LeakyRelu`` (which ONNX Runtime fuses into the convolution);
* a stride-2 transposed convolution (kernel 3, padding 1, output padding 1) is a 2x2 convolution to 4x the
  channels followed by ``DepthToSpace`` (sub-pixel form: no zero-stuffed input is ever convolved);
* the members of a model set run in one graph whose output is the mean of their softmax foregrounds.

Anything outside the supported subset raises :class:`UnsupportedNetwork` and the caller uses torch instead;
``tests/test_fast_predictor.py`` checks the graph against eager MONAI on the shipped and on random weights.
"""

from __future__ import annotations

import numpy as np

from monaiunetseg.model import onnx_proto as op

BN_EPS = 1e-5  # torch.nn.BatchNorm2d's default, which MONAI's "batch" norm uses
# network_def arguments the graph builder reproduces, with the values it supports (MONAI's defaults first).
_SUPPORTED = {"kernel_size": (3,), "up_kernel_size": (3,), "act": ("PRELU", "prelu"), "dropout": (0.0, 0, None),
              "bias": (True,), "adn_ordering": ("NDA",), "norm": ("batch", "BATCH"), "spatial_dims": (2,)}
_REQUIRED = ("in_channels", "out_channels", "channels", "strides")


class UnsupportedNetwork(ValueError):
    """The network or weights are not what this builder reproduces exactly; use the torch path."""


class _Graph:
    """Nodes and initializers of one model under construction (names are unique per member prefix)."""

    def __init__(self) -> None:
        self.nodes: list[bytes] = []
        self.initializers: list[bytes] = []
        self.count = 0

    def constant(self, name: str, array: np.ndarray) -> str:
        self.initializers.append(op.tensor(name, array))
        return name

    def add(self, op_type: str, inputs: list[str], prefix: str, **attributes) -> str:
        self.count += 1
        out = f"{prefix}/{op_type}_{self.count}"
        self.nodes.append(op.node(op_type, inputs, [out], **attributes))
        return out


def _sub_pixel(w: np.ndarray) -> np.ndarray:
    """``(Cin, Cout, 3, 3)`` weights of a transposed conv (stride 2, padding 1, output padding 1) -> the
    ``(4 Cout, Cin, 2, 2)`` conv (padding: one row/column after) whose channel ``c * 4 + a * 2 + b`` is output
    pixel ``(2i + a, 2j + b)`` of channel ``c``: input ``i`` reaches outputs ``2i - 1 + k``, so output ``2i + a``
    takes input ``i + d`` through kernel tap ``TAP[(a, d)]``."""
    tap = {(0, 0): 1, (1, 0): 2, (1, 1): 0}
    cin, cout = w.shape[:2]
    sub = np.zeros((cout, 2, 2, cin, 2, 2))
    for (a, di), ka in tap.items():
        for (c, dj), kc in tap.items():
            sub[:, a, c, :, di, dj] = w[:, :, ka, kc].T
    return sub.reshape(4 * cout, cin, 2, 2)


class _Member:
    """Emits one member's layers into a ``_Graph``, consuming its state_dict entries (all must be used)."""

    def __init__(self, graph: _Graph, state: dict[str, np.ndarray], prefix: str, args: dict, phase_top: bool = True) -> None:
        self.g, self.prefix, self.args = graph, prefix, args
        self.phase_top, self.phase_output = phase_top, False  # see top_foreground
        self.state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
        self.used: set[str] = set()
        self.res_units = int(args.get("num_res_units", 0))

    def take(self, key: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
        if key not in self.state:
            raise UnsupportedNetwork(f"weights lack {key}")
        value = np.asarray(self.state[key], dtype=np.float64)
        if shape is not None and value.shape != shape:
            raise UnsupportedNetwork(f"{key}: shape {value.shape}, expected {shape}")
        self.used.add(key)
        return value

    def check_all_used(self) -> None:
        unused = sorted(set(self.state) - self.used)
        if unused:
            raise UnsupportedNetwork(f"weights hold entries the network does not use: {', '.join(unused[:5])}")

    # -- layers ---------------------------------------------------------------------------------------------
    def _fold_norm(self, key: str, w: np.ndarray, b: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
        n = w.shape[axis]
        gamma, beta = self.take(f"{key}.adn.N.weight", (n,)), self.take(f"{key}.adn.N.bias", (n,))
        mean, var = self.take(f"{key}.adn.N.running_mean", (n,)), self.take(f"{key}.adn.N.running_var", (n,))
        scale = gamma / np.sqrt(var + BN_EPS)
        shape = [1] * w.ndim
        shape[axis] = n
        return w * scale.reshape(shape), (b - mean) * scale + beta

    def _act(self, x: str, key: str) -> str:
        """MONAI's default ``PRELU`` (one learned slope) is exactly ``LeakyRelu`` with that slope."""
        slope = self.take(f"{key}.adn.A.weight", (1,))
        return self.g.add("LeakyRelu", [x], self.prefix, alpha=float(slope[0]))

    def _conv_node(self, x: str, key: str, w: np.ndarray, b: np.ndarray, stride: int, pads: list[int]) -> str:
        wn = self.g.constant(f"{self.prefix}/{key}.w", w.astype(np.float32))
        bn = self.g.constant(f"{self.prefix}/{key}.b", b.astype(np.float32))
        return self.g.add("Conv", [x, wn, bn], self.prefix, kernel_shape=list(w.shape[2:]), strides=[stride, stride], pads=pads)

    def convolution(self, x: str, key: str, cin: int, cout: int, stride: int, conv_only: bool = False) -> str:
        """MONAI ``Convolution`` (conv -> batch norm -> dropout -> PReLU), ``key`` its state_dict prefix."""
        w, b = self.take(f"{key}.conv.weight", (cout, cin, 3, 3)), self.take(f"{key}.conv.bias", (cout,))
        if conv_only:
            return self._conv_node(x, key, w, b, stride, [1, 1, 1, 1])
        w, b = self._fold_norm(key, w, b, axis=0)
        return self._act(self._conv_node(x, key, w, b, stride, [1, 1, 1, 1]), key)

    def up_convolution(self, x: str, key: str, cin: int, cout: int, stride: int, conv_only: bool) -> str:
        """MONAI transposed ``Convolution`` (kernel 3, padding 1, output padding ``stride - 1``)."""
        w, b = self.take(f"{key}.conv.weight", (cin, cout, 3, 3)), self.take(f"{key}.conv.bias", (cout,))
        if not conv_only:
            w, b = self._fold_norm(key, w, b, axis=1)
        if stride == 1:  # transposed conv, stride 1, padding 1 == conv with the flipped, transposed kernel
            y = self._conv_node(x, key, np.flip(w, (2, 3)).transpose(1, 0, 2, 3), b, 1, [1, 1, 1, 1])
            return y if conv_only else self._act(y, key)
        if stride != 2:
            raise UnsupportedNetwork(f"{key}: transposed convolution of stride {stride}")
        y = self._conv_node(x, key, _sub_pixel(w), np.repeat(b, 4), 1, [0, 0, 1, 1])
        if not conv_only:
            y = self._act(y, key)  # elementwise: commutes with the pixel shuffle
        return self.g.add("DepthToSpace", [y], self.prefix, blocksize=2, mode="CRD")  # = torch's PixelShuffle

    def residual_unit(self, x: str, key: str, cin: int, cout: int, stride: int, subunits: int,
                      last_conv_only: bool = False) -> str:
        """MONAI ``ResidualUnit``: ``subunits`` convolutions plus a (conv or identity) residual, added."""
        y, channels = x, cin
        for su in range(max(1, subunits)):
            conv_only = last_conv_only and su == max(1, subunits) - 1
            y = self.convolution(y, f"{key}.conv.unit{su}", channels, cout, stride if su == 0 else 1, conv_only)
            channels = cout
        if stride != 1 or cin != cout:
            k = 3 if stride != 1 else 1
            w, b = self.take(f"{key}.residual.weight", (cout, cin, k, k)), self.take(f"{key}.residual.bias", (cout,))
            res = self._conv_node(x, f"{key}.residual", w, b, stride, [k // 2] * 4)
        else:
            res = x
        return self.g.add("Add", [y, res], self.prefix)

    def down(self, x: str, key: str, cin: int, cout: int, stride: int) -> str:
        if self.res_units > 0:
            return self.residual_unit(x, key, cin, cout, stride, self.res_units)
        return self.convolution(x, key, cin, cout, stride)

    def top_foreground(self, x: str, key: str, cin: int) -> str:
        """The top up layer of a two-class UNet straight to ``sigmoid(l1 - l0)`` (= softmax channel 1), kept in
        sub-pixel "phase space" ``(N, 4, H, W)`` (channel ``a * 2 + b`` = output pixels ``(2i + a, 2j + b)``).

        The layer is: transposed conv (sub-pixel: conv to 4 x 2 channels) -> ``ResidualUnit`` of one 3x3 conv
        plus identity. Its logit difference is a 3x3 conv of the 2-channel output plus ``z1 - z0``, i.e. one
        3x3 conv of the 8 phase channels to 4 phases at half resolution: no 256 x 256 tensor of two channels
        (padded to 16 by ONNX Runtime's blocked layout) is ever made. The caller averages and pixel-shuffles."""
        w, b = self.take(f"{key}.0.conv.weight", (cin, 2, 3, 3)), self.take(f"{key}.0.conv.bias", (2,))
        w, b = self._fold_norm(f"{key}.0", w, b, axis=1)
        z = self._act(self._conv_node(x, f"{key}.0", _sub_pixel(w), np.repeat(b, 4), 1, [0, 0, 1, 1]), f"{key}.0")
        wc, bc = self.take(f"{key}.1.conv.unit0.conv.weight", (2, 2, 3, 3)), self.take(f"{key}.1.conv.unit0.conv.bias", (2,))
        wd = wc[1] - wc[0]
        wd[1, 1, 1] += 1.0  # the identity residual: + z1 - z0
        wd[0, 1, 1] -= 1.0
        kernel = np.zeros((4, 8, 3, 3))
        for a in (0, 1):
            for c in (0, 1):
                for ky in range(3):
                    for kx in range(3):
                        ty, tx = a + ky - 1, c + kx - 1  # full-resolution offset from the output pixel
                        for ch in (0, 1):
                            kernel[a * 2 + c, ch * 4 + (ty % 2) * 2 + tx % 2, ty // 2 + 1, tx // 2 + 1] += wd[ch, ky, kx]
        d = self._conv_node(z, f"{key}.1", kernel, np.full(4, bc[1] - bc[0]), 1, [1, 1, 1, 1])
        return self.g.add("Sigmoid", [d], self.prefix)

    def up(self, x: str, key: str, cin: int, cout: int, stride: int, is_top: bool) -> str:
        if self.phase_top and is_top and self.res_units > 0 and stride == 2 and cout == 2:
            self.phase_output = True
            return self.top_foreground(x, key, cin)
        if self.res_units > 0:
            y = self.up_convolution(x, f"{key}.0", cin, cout, stride, conv_only=False)
            return self.residual_unit(y, f"{key}.1", cout, cout, 1, 1, last_conv_only=is_top)
        return self.up_convolution(x, key, cin, cout, stride, conv_only=is_top)

    def block(self, x: str, key: str, cin: int, cout: int, channels: list[int], strides: list[int], is_top: bool) -> str:
        """``UNet._create_block``: down layer, skip connection around the sub-block (concatenated), up layer."""
        c, s = channels[0], strides[0]
        d = self.down(x, f"{key}0", cin, c, s)
        if len(channels) > 2:
            sub = self.block(d, f"{key}1.submodule.", c, c, channels[1:], strides[1:], False)
            up_in = 2 * c
        else:
            sub = self.down(d, f"{key}1.submodule", c, channels[1], 1)
            up_in = c + channels[1]
        cat = self.g.add("Concat", [d, sub], self.prefix, axis=1)
        return self.up(cat, f"{key}2", up_in, cout, s, is_top)


def check_supported(args: dict) -> None:
    """Raise :class:`UnsupportedNetwork` unless ``args`` (``network_def`` without ``_target_``) is a 2D UNet
    this builder reproduces exactly."""
    missing = [k for k in _REQUIRED if k not in args]
    unknown = sorted(set(args) - set(_REQUIRED) - set(_SUPPORTED) - {"num_res_units"})
    if missing or unknown:
        raise UnsupportedNetwork(f"network_def: missing {missing} / unsupported {unknown}")
    for key, values in _SUPPORTED.items():
        if key in args and args[key] not in values:
            raise UnsupportedNetwork(f"network_def.{key} = {args[key]!r} (supported: {values})")
    if "spatial_dims" not in args or "norm" not in args:
        raise UnsupportedNetwork("network_def must give spatial_dims 2 and norm 'batch'")
    if len(args["channels"]) < 2 or len(args["strides"]) != len(args["channels"]) - 1:
        raise UnsupportedNetwork("network_def: channels/strides of a UNet")


def _channel(g: _Graph, x: str, prefix: str, c: int) -> str:
    starts, ends, axes = (g.constant(f"{prefix}/slice{c}_{n}", np.array([v], np.int64)) for n, v in (("s", c), ("e", c + 1), ("a", 1)))
    return g.add("Slice", [x, starts, ends, axes], prefix)


def _foreground(g: _Graph, logits: str, prefix: str, classes: int) -> str:
    """Softmax channel 1; for two classes as ``sigmoid(l1 - l0)`` (the same number; ONNX Runtime's softmax over
    axis 1 of NCHW transposes the whole tensor and took 16 % of the model time)."""
    if classes == 2:
        return g.add("Sigmoid", [g.add("Sub", [_channel(g, logits, prefix, 1), _channel(g, logits, prefix, 0)], prefix)], prefix)
    return _channel(g, g.add("Softmax", [logits], prefix, axis=1), prefix, 1)


def ensemble_graph(args: dict, states: list[dict[str, np.ndarray]], metadata: dict[str, str] | None = None,
                   phase_top: bool = True) -> bytes:
    """Serialized ONNX model: input ``image`` ``(N, in_channels, H, W)`` float32, output ``foreground``
    ``(N, 1, H, W)``: the mean over ``states`` (members) of softmax channel 1 of the UNet's logits; and
    ``members``: each member's foreground, concatenated on axis 1 (in sub-pixel phase space when the top layer
    is built there: the pixels of each member in another order).
    ``phase_top=False`` keeps the top layer as MONAI has it (for comparison; see ``_Member.top_foreground``)."""
    check_supported(args)
    if not states:
        raise UnsupportedNetwork("no weights")
    g = _Graph()
    cin, cout = int(args["in_channels"]), int(args["out_channels"])
    channels, strides = [int(c) for c in args["channels"]], [int(s) for s in args["strides"]]
    fgs, phase = [], False
    for i, state in enumerate(states):
        member = _Member(g, state, f"m{i}", args, phase_top)
        out = member.block("image", "model.", cin, cout, channels, strides, True)
        member.check_all_used()
        phase = member.phase_output
        fgs.append(out if phase else _foreground(g, out, f"m{i}", cout))
    out = fgs[0] if len(fgs) == 1 else g.add("Mean", fgs, "ensemble")
    if phase:  # members' foregrounds in sub-pixel phase space: averaged there, one pixel shuffle
        out = g.add("DepthToSpace", [out], "ensemble", blocksize=2, mode="CRD")
    g.nodes.append(op.node("Identity", [out], ["foreground"]))
    # Each member's foreground as it is (in phase space, pixels in another order): for the trust signals,
    # which are counts and so do not depend on the order of the pixels.
    members = fgs[0] if len(fgs) == 1 else g.add("Concat", fgs, "members", axis=1)
    g.nodes.append(op.node("Identity", [members], ["members"]))
    return op.model(g.nodes, g.initializers, [op.value_info("image", ["N", cin, "H", "W"])],
                    [op.value_info("foreground", ["N", 1, "H", "W"]), op.value_info("members", ["N", "M", "h", "w"])],
                    metadata=metadata, name="monaiunetseg_unet")
