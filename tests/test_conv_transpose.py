"""conv_transpose2d / conv_transpose1d and the ConvTranspose modules on every
backend, against torch.nn.functional (float64 on CPU as the oracle),
fastops.reference and gradcheck."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F
from conftest import BACKEND_CASES

import fastops
from fastops.nn import ConvTranspose1d, ConvTranspose2d
from fastops.ops import conv_transpose1d, conv_transpose2d

# The Triton interpreter pays per program instance: fewer and smaller cases there.
CASES_PER_BACKEND = {"triton": 10}
COMPILED_BACKENDS = [c for c in BACKEND_CASES if c.values[1] != "reference"]


def on(backend, fn, *args, **kwargs):
    with fastops.use_backend(backend):
        return fn(*args, **kwargs)


def random_geometry(rng: random.Random, small: bool) -> dict:
    """A random valid conv_transpose2d configuration: kernel 1-5, stride 1-4,
    dilation 1-2, padding, output_padding below max(stride, dilation), groups
    1/2/3 or depthwise, odd spatial sizes."""
    while True:
        kernel = (rng.randint(1, 5), rng.randint(1, 5))
        stride = (rng.randint(1, 4), rng.randint(1, 4))
        dilation = (rng.randint(1, 2), rng.randint(1, 2))
        padding = (rng.randint(0, 3), rng.randint(0, 3))
        output_padding = tuple(
            rng.randint(0, max(s, d) - 1) for s, d in zip(stride, dilation, strict=True)
        )
        groups = rng.choice([1, 1, 2, 3])
        depthwise = rng.random() < 0.15
        per_group_in = 1 if depthwise else rng.randint(1, 3 if small else 5)
        per_group_out = 1 if depthwise else rng.randint(1, 3 if small else 5)
        if depthwise:
            groups = rng.randint(2, 4)
        size = (rng.randint(1, 5 if small else 9), rng.randint(1, 5 if small else 9))
        out = [
            (size[i] - 1) * stride[i]
            - 2 * padding[i]
            + dilation[i] * (kernel[i] - 1)
            + output_padding[i]
            + 1
            for i in range(2)
        ]
        if min(out) > 0:
            return dict(
                batch=rng.randint(1, 2),
                in_channels=groups * per_group_in,
                out_channels=groups * per_group_out,
                size=size,
                kernel=kernel,
                stride=stride,
                padding=padding,
                output_padding=output_padding,
                groups=groups,
                dilation=dilation,
                bias=rng.random() < 0.7,
                channels_last=rng.random() < 0.5,
                relu=rng.random() < 0.3,
            )


def make_inputs(g: dict, dtype=torch.float64, device="cpu"):
    x = torch.randn(g["batch"], g["in_channels"], *g["size"], dtype=dtype, device=device)
    if g["channels_last"]:
        x = x.contiguous(memory_format=torch.channels_last)
    w = torch.randn(
        g["in_channels"], g["out_channels"] // g["groups"], *g["kernel"], dtype=dtype, device=device
    )
    b = torch.randn(g["out_channels"], dtype=dtype, device=device) if g["bias"] else None
    return x, w, b


def conv_args(g: dict):
    return g["stride"], g["padding"], g["output_padding"], g["groups"], g["dilation"]


def torch_forward_backward(x, w, b, g, grad):
    """torch.nn.functional's output and gradients in float64 on the CPU."""
    leaves = [
        t.detach().cpu().double().requires_grad_() if t is not None else None for t in (x, w, b)
    ]
    out = F.conv_transpose2d(leaves[0], leaves[1], leaves[2], *conv_args(g))
    if g["relu"]:
        out = out.relu()
    out.backward(grad.cpu().double())
    return out.detach(), [t.grad if t is not None else None for t in leaves]


def fastops_forward_backward(backend, x, w, b, g, grad):
    leaves = [t.detach().clone().requires_grad_() if t is not None else None for t in (x, w, b)]
    out = on(
        backend,
        conv_transpose2d,
        leaves[0],
        leaves[1],
        leaves[2],
        *conv_args(g),
        activation="relu" if g["relu"] else None,
    )
    out.backward(grad)
    return out.detach(), [t.grad if t is not None else None for t in leaves]


def assert_layout(out: torch.Tensor, x: torch.Tensor) -> None:
    from fastops._conv_transpose import conv_memory_format

    assert out.is_contiguous(memory_format=conv_memory_format(x))


# --- values and gradients against torch ----------------------------------------------------


@pytest.mark.parametrize(("device", "backend"), BACKEND_CASES)
def test_random_geometry_matches_torch_in_float64(device, backend):
    rng = random.Random(torch.initial_seed())
    for _ in range(CASES_PER_BACKEND.get(backend, 40)):
        g = random_geometry(rng, small=backend == "triton")
        x, w, b = make_inputs(g, device=device)
        shape = F.conv_transpose2d(x.cpu(), w.cpu(), None, *conv_args(g)).shape
        grad = torch.randn(shape, dtype=torch.float64, device=device)
        expected, expected_grads = torch_forward_backward(x, w, b, g, grad)
        out, grads = fastops_forward_backward(backend, x, w, b, g, grad)
        torch.testing.assert_close(
            out.cpu(), expected, rtol=1e-10, atol=1e-10, msg=lambda m, g=g: f"{g}: {m}"
        )
        assert_layout(out, x)
        for name, got, want in zip(("input", "weight", "bias"), grads, expected_grads, strict=True):
            if want is not None:
                torch.testing.assert_close(
                    got.cpu(),
                    want,
                    rtol=1e-10,
                    atol=1e-10,
                    msg=lambda m, n=name, g=g: f"grad {n}, {g}: {m}",
                )
        assert_layout(grads[0], x)


DECODER_SHAPES = [
    # (name, N, C_in, C_out, H, W, kernel, stride, padding, output_padding, groups)
    ("unet-2x2-s2", 2, 16, 8, 7, 6, 2, 2, 0, 0, 1),
    ("ternausnet-3x3-s2-p1-op1", 2, 12, 8, 5, 7, 3, 2, 1, 1, 1),
    ("unet16-4x4-s2-p1", 1, 8, 8, 6, 5, 4, 2, 1, 0, 1),
    ("fcn-16x16-s8-depthwise", 1, 3, 3, 3, 4, 16, 8, 4, 0, 3),
    ("maskrcnn-head-2x2-s2", 6, 16, 16, 4, 4, 2, 2, 0, 0, 1),
]


@pytest.mark.parametrize(("device", "backend"), BACKEND_CASES)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("shape", DECODER_SHAPES, ids=[s[0] for s in DECODER_SHAPES])
def test_decoder_shapes_in_float32(device, backend, channels_last, shape):
    _, n, cin, cout, h, w, k, s, p, op, groups = shape
    x = torch.randn(n, cin, h, w, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    weight = torch.randn(cin, cout // groups, k, k, device=device)
    bias = torch.randn(cout, device=device)
    out = on(backend, conv_transpose2d, x, weight, bias, s, p, op, groups, activation="relu")
    expected = F.conv_transpose2d(
        x.double().cpu(), weight.double().cpu(), bias.double().cpu(), s, p, op, groups
    )
    # float32 sums of C_in * taps products, each of size ~1.
    torch.testing.assert_close(
        out.cpu().double(), expected.relu(), rtol=1e-5, atol=2e-5 * (cin * k * k) ** 0.5
    )
    assert_layout(out, x)


@pytest.mark.parametrize(("device", "backend"), BACKEND_CASES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_within_the_error_of_the_dtype(device, backend, dtype):
    """Within twice the error torch's own conv_transpose2d makes in the dtype
    (against float64), plus one unit in the last place of the output."""
    for shape in DECODER_SHAPES[:3]:
        _, n, cin, cout, h, w, k, s, p, op, groups = shape
        x = torch.randn(n, cin, h, w, device=device)
        weight = torch.randn(cin, cout // groups, k, k, device=device) / (cin * k * k) ** 0.5
        bias = torch.randn(cout, device=device)
        exact = F.conv_transpose2d(x.double(), weight.double(), bias.double(), s, p, op, groups)
        x16, w16, b16 = x.to(dtype), weight.to(dtype), bias.to(dtype)
        exact16 = F.conv_transpose2d(x16.double(), w16.double(), b16.double(), s, p, op, groups)
        torch_err = (
            (
                F.conv_transpose2d(x16.float(), w16.float(), b16.float(), s, p, op, groups)
                .to(dtype)
                .double()
                - exact16
            )
            .abs()
            .max()
        )
        out = on(backend, conv_transpose2d, x16, w16, b16, s, p, op, groups)
        assert out.dtype == dtype
        ulp = torch.finfo(dtype).eps * exact16.abs().max()
        err = (out.double() - exact16).abs().max()
        assert err <= 2 * torch_err + ulp, (shape[0], float(err), float(torch_err))
        del exact

        grad = torch.randn_like(out)
        xg, wg, bg = (t.clone().requires_grad_() for t in (x16, w16, b16))
        on(backend, conv_transpose2d, xg, wg, bg, s, p, op, groups).backward(grad)
        xr, wr, br = (t.double().requires_grad_() for t in (x16, w16, b16))
        F.conv_transpose2d(xr, wr, br, s, p, op, groups).backward(grad.double())
        for got, want in ((xg.grad, xr.grad), (wg.grad, wr.grad), (bg.grad, br.grad)):
            assert got.dtype == dtype
            scale = want.abs().max()
            assert (got.double() - want).abs().max() <= 4 * torch.finfo(dtype).eps * scale, shape[0]


@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize(
    "shape",
    [(2, 256, 128, 25, 2, 2, 0, 0), (2, 96, 64, 17, 3, 2, 1, 1), (3, 64, 48, 9, 4, 2, 1, 0)],
    ids=["k2s2", "k3s2p1op1", "k4s2p1"],
)
def test_gpu_tiles_on_real_channel_counts(backend, dtype, channels_last, shape):
    """Channel counts that fill several tensor-core tiles and K steps, against
    float64 on the CPU; the backward is bitwise repeatable."""
    torch.backends.cuda.matmul.allow_tf32 = False
    n, cin, cout, size, k, s, p, op = shape
    x = torch.randn(n, cin, size, size + 2, device="cuda").to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w = (torch.randn(cin, cout, k, k, device="cuda") / (cin * k * k) ** 0.5).to(dtype)
    b = torch.randn(cout, device="cuda").to(dtype)
    leaves = [t.detach().requires_grad_() for t in (x, w, b)]
    out = on(backend, conv_transpose2d, *leaves, s, p, op)
    expected = F.conv_transpose2d(x.double().cpu(), w.double().cpu(), b.double().cpu(), s, p, op)
    tolerance = (
        1e-4 if dtype == torch.float32 else 2 * torch.finfo(dtype).eps * expected.abs().max()
    )
    assert (out.double().cpu() - expected).abs().max() <= tolerance
    assert_layout(out, x)
    grad = torch.randn_like(out)
    first = torch.autograd.grad(out, leaves, grad)
    second = torch.autograd.grad(on(backend, conv_transpose2d, *leaves, s, p, op), leaves, grad)
    for a, c in zip(first, second, strict=True):
        assert torch.equal(a, c)
    ref_leaves = [t.detach().double().cpu().requires_grad_() for t in (x, w, b)]
    F.conv_transpose2d(*ref_leaves, s, p, op).backward(grad.double().cpu())
    for got, leaf in zip(first, ref_leaves, strict=True):
        scale = leaf.grad.abs().max()
        limit = 1e-4 * scale if dtype == torch.float32 else 4 * torch.finfo(dtype).eps * scale
        assert (got.double().cpu() - leaf.grad).abs().max() <= limit


@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_tf32_only_when_allowed(backend):
    """float32 is exact to float32 rounding unless torch.backends.cuda.matmul.allow_tf32."""
    x = torch.randn(2, 128, 20, 20, device="cuda")
    w = torch.randn(128, 64, 2, 2, device="cuda")
    expected = F.conv_transpose2d(x.double(), w.double(), None, 2)
    previous = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        exact = on(backend, conv_transpose2d, x, w, None, 2)
        torch.backends.cuda.matmul.allow_tf32 = True
        fast = on(backend, conv_transpose2d, x, w, None, 2)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous
    assert (exact.double() - expected).abs().max() < 1e-4
    assert (fast.double() - expected).abs().max() < 5e-2


@pytest.mark.parametrize(("device", "backend"), BACKEND_CASES)
def test_conv_transpose1d_and_unbatched_input(device, backend):
    x = torch.randn(2, 4, 9, dtype=torch.float64, device=device)
    w = torch.randn(4, 3, 3, dtype=torch.float64, device=device)
    b = torch.randn(6, dtype=torch.float64, device=device)
    out = on(backend, conv_transpose1d, x, w, b, 2, 1, 1, 2, 2)
    torch.testing.assert_close(out, F.conv_transpose1d(x, w, b, 2, 1, 1, 2, 2))
    torch.testing.assert_close(
        on(backend, conv_transpose1d, x[0], w, b, 2, 1, 1, 2, 2),
        F.conv_transpose1d(x[0], w, b, 2, 1, 1, 2, 2),
    )
    x2 = torch.randn(4, 5, 6, dtype=torch.float64, device=device)
    w2 = torch.randn(4, 3, 3, 2, dtype=torch.float64, device=device)
    torch.testing.assert_close(
        on(backend, conv_transpose2d, x2, w2, None, (2, 3), (1, 0), (1, 2)),
        F.conv_transpose2d(x2, w2, None, (2, 3), (1, 0), (1, 2)),
    )


@pytest.mark.parametrize(("device", "backend"), BACKEND_CASES)
def test_fused_relu_and_its_gradient(device, backend):
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64, device=device, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64, device=device, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, device=device, requires_grad=True)
    out = on(backend, conv_transpose2d, x, w, b, 2, 1, 1, activation="relu")
    reference = F.conv_transpose2d(x, w, b, 2, 1, 1).relu()
    torch.testing.assert_close(out, reference)
    assert (out == 0).any() and (out > 0).any()
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, (x, w, b), grad)
    want = torch.autograd.grad(reference, (x, w, b), grad)
    for a, e in zip(got, want, strict=True):
        torch.testing.assert_close(a, e)


@pytest.mark.parametrize(("device", "backend"), BACKEND_CASES)
def test_nan_empty_batch_and_no_input_channels(device, backend):
    x = torch.randn(1, 2, 3, 3, dtype=torch.float64, device=device)
    x[0, 0, 1, 1] = float("nan")
    w = torch.randn(2, 2, 2, 2, dtype=torch.float64, device=device)
    for activation in (None, "relu"):
        out = on(backend, conv_transpose2d, x, w, None, 2, activation=activation)
        expected = F.conv_transpose2d(x, w, None, 2)
        torch.testing.assert_close(out, expected.relu() if activation else expected, equal_nan=True)
    empty = torch.randn(0, 2, 3, 3, dtype=torch.float64, device=device, requires_grad=True)
    out = on(backend, conv_transpose2d, empty, w, None, 2)
    assert out.shape == (0, 2, 6, 6)
    out.sum().backward()
    assert empty.grad.shape == empty.shape
    # No input channels: the output is the bias (torch raises).
    bias = torch.randn(4, dtype=torch.float64, device=device)
    no_weight = torch.empty(0, 4, 2, 2, dtype=torch.float64, device=device)
    out = on(backend, conv_transpose2d, x[:, :0], no_weight, bias, 2)
    torch.testing.assert_close(out, bias[None, :, None, None].expand(1, 4, 6, 6))


@pytest.mark.parametrize(("device", "backend"), BACKEND_CASES)
@pytest.mark.parametrize("seed_offset", [0, 1])
def test_gradcheck(device, backend, seed_offset):
    rng = random.Random(torch.initial_seed() + seed_offset)
    # gradcheck runs the op twice per input element: few elements for the interpreter.
    limit = 80 if backend == "triton" else 400
    while True:
        g = random_geometry(rng, small=True)
        x, w, b = make_inputs(g, device=device)
        if x.numel() + w.numel() <= limit:
            break
    inputs = [t.requires_grad_() for t in (x, w, b) if t is not None]

    def fn(*tensors):
        bias = tensors[2] if g["bias"] else None
        # No ReLU: its kink makes finite differences unreliable.
        return conv_transpose2d(tensors[0], tensors[1], bias, *conv_args(g))

    with fastops.use_backend(backend):
        # fast_mode checks random projections of the Jacobian: a few backward calls
        # instead of one per output element, which the interpreter cannot afford.
        assert torch.autograd.gradcheck(
            fn, inputs, eps=1e-6, atol=1e-6, fast_mode=backend == "triton"
        ), g


# --- modules ---------------------------------------------------------------------------


def test_modules_load_torch_state_dicts_and_match_torch():
    for torch_cls, fastops_cls, shape in (
        (torch.nn.ConvTranspose2d, ConvTranspose2d, (2, 6, 5, 7)),
        (torch.nn.ConvTranspose1d, ConvTranspose1d, (2, 6, 11)),
    ):
        reference = torch_cls(6, 4, 3, stride=2, padding=1, output_padding=1, groups=2, dilation=1)
        module = fastops_cls(6, 4, 3, stride=2, padding=1, output_padding=1, groups=2)
        assert isinstance(module, torch_cls)
        assert module.state_dict().keys() == reference.state_dict().keys()
        for key, value in reference.state_dict().items():
            assert module.state_dict()[key].shape == value.shape
        module.load_state_dict(reference.state_dict())
        x = torch.randn(*shape)
        torch.testing.assert_close(module(x), reference(x), rtol=1e-5, atol=1e-5)
        reference.load_state_dict(module.state_dict())
        # forward(input, output_size) picks among the sizes the stride allows.
        target = [s * 2 for s in shape[2:]]
        torch.testing.assert_close(
            module(x, output_size=target), reference(x, output_size=target), rtol=1e-5, atol=1e-5
        )
        assert module(x, output_size=[2, 4, *target]).shape[2:] == tuple(target)
        with pytest.raises(ValueError, match="requested an output size"):
            module(x, output_size=[s * 2 + 2 for s in shape[2:]])


def test_module_initialisation_and_fused_relu():
    torch.manual_seed(3)
    reference = torch.nn.ConvTranspose2d(8, 4, 2, stride=2)
    torch.manual_seed(3)
    module = ConvTranspose2d(8, 4, 2, stride=2, activation="relu")
    torch.testing.assert_close(module.weight, reference.weight, rtol=0, atol=0)
    torch.testing.assert_close(module.bias, reference.bias, rtol=0, atol=0)
    x = torch.randn(2, 8, 5, 5)
    torch.testing.assert_close(module(x), reference(x).relu(), rtol=1e-5, atol=1e-5)
    assert "activation='relu'" in repr(module)
    with pytest.raises(ValueError, match="activation"):
        ConvTranspose2d(8, 4, 2, activation="gelu")


# --- opcheck, compile, errors ----------------------------------------------------------------


def _op(name, backend):
    return getattr(torch.ops.fastops, name + ("_triton" if backend == "triton" else ""))


@pytest.mark.parametrize(("device", "backend"), COMPILED_BACKENDS)
@pytest.mark.parametrize("channels_last", [False, True])
def test_opcheck(device, backend, channels_last):
    x = torch.randn(2, 4, 3, 5, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    w = torch.randn(4, 3, 3, 2, device=device, requires_grad=True)
    b = torch.randn(6, device=device, requires_grad=True)
    torch.library.opcheck(
        _op("conv_transpose", backend), (x, w, b, [2, 1], [1, 0], [1, 0], 2, [1, 2], True)
    )
    grad = torch.randn(2, 6, 6, 7, device=device)
    torch.library.opcheck(
        _op("_conv_transpose_backward", backend),
        (grad, x.detach(), w.detach(), None, [2, 1], [1, 0], 2, [1, 2], [True, True, True]),
    )


@pytest.mark.parametrize(("device", "backend"), COMPILED_BACKENDS)
def test_torch_compile_fullgraph(device, backend):
    torch._dynamo.reset()
    up = ConvTranspose2d(6, 4, 2, stride=2, activation="relu").to(device)
    w = torch.randn(4, 2, 3, 3, device=device)

    def decoder(x):
        y = up(x)
        return conv_transpose2d(y, w, None, 2, 1, 1)

    x = torch.randn(2, 6, 3, 4, device=device)
    with fastops.use_backend(backend):
        eager = decoder(x)
        compiled = torch.compile(decoder, fullgraph=True, backend="aot_eager")(x)
    torch.testing.assert_close(compiled, eager, rtol=0, atol=0)


def test_bad_arguments_raise_clear_errors():
    x = torch.randn(2, 4, 5, 5)
    w = torch.randn(4, 3, 3, 3)
    with pytest.raises(ValueError, match=r"in_channels \(4\) must be divisible by groups \(3\)"):
        conv_transpose2d(x, torch.randn(4, 1, 3, 3), groups=3)
    with pytest.raises(ValueError, match="input has 4 channels but weight"):
        conv_transpose2d(x, torch.randn(5, 3, 3, 3))
    with pytest.raises(
        ValueError, match="output_padding must be smaller than either stride or dilation"
    ):
        conv_transpose2d(x, w, stride=2, output_padding=2)
    with pytest.raises(
        ValueError, match="output_padding must be smaller than either stride or dilation"
    ):
        conv_transpose2d(x, w, stride=1, dilation=2, output_padding=(0, 2))
    with pytest.raises(ValueError, match=r"weight must be \[C_in, C_out / groups, kH, kW\]"):
        conv_transpose2d(x, torch.randn(4, 3, 3))
    with pytest.raises(ValueError, match=r"weight must be \[C_in, C_out / groups, k\]"):
        conv_transpose1d(torch.randn(2, 4, 5), w)
    with pytest.raises(ValueError, match="input must be"):
        conv_transpose2d(torch.randn(5, 5), w)
    with pytest.raises(ValueError, match="stride must be positive"):
        conv_transpose2d(x, w, stride=0)
    with pytest.raises(ValueError, match="padding must be non-negative"):
        conv_transpose2d(x, w, padding=-1)
    with pytest.raises(ValueError, match="dilation must be positive"):
        conv_transpose2d(x, w, dilation=(1, 0))
    with pytest.raises(ValueError, match="output size along spatial dim 0 would be"):
        conv_transpose2d(x, w, padding=(9, 0))
    with pytest.raises(TypeError, match="stride must be an int or a tuple of 2 ints"):
        conv_transpose2d(x, w, stride=(1, 2, 3))
    with pytest.raises(TypeError, match=r"weight \(torch.float64\) must have the dtype of input"):
        conv_transpose2d(x, w.double())
    with pytest.raises(ValueError, match=r"bias must be \[3\]"):
        conv_transpose2d(x, w, torch.randn(4))
    with pytest.raises(ValueError, match="groups must be a positive int"):
        conv_transpose2d(x, w, groups=0)
    with pytest.raises(ValueError, match="activation must be None or 'relu'"):
        conv_transpose2d(x, w, activation="tanh")
    with pytest.raises(TypeError, match="input must be float16, bfloat16, float32 or float64"):
        conv_transpose2d(x.long(), w)
    with pytest.raises(ValueError, match="spatial size of 0"):
        conv_transpose2d(torch.randn(2, 4, 0, 5), w)
    module = ConvTranspose2d(4, 3, 3, stride=2)
    with pytest.raises(ValueError, match="output_size must have 2 or 4 elements"):
        module(x, output_size=[10])
    with pytest.raises(ValueError, match=r"valid sizes range from \[11, 11\] to \[12, 12\]"):
        module(x, output_size=[9, 9])


# --- the CUDA kernels' tile mapping, emulated on the host -------------------------------------


def test_cuda_tile_mapping_emulated_on_the_host(tmp_path):
    """The CUDA kernels cannot run here; their tile geometry
    (csrc/cuda/conv_transpose_tiles.h) is plain host/device C++, so a host
    program runs it block by block and thread by thread against direct loops
    (58 geometries, three tile configurations)."""
    import shutil
    import subprocess
    from pathlib import Path

    from torch.utils.cpp_extension import include_paths

    compiler = shutil.which("c++") or shutil.which("g++")
    if compiler is None:
        pytest.skip("no C++ compiler")
    root = Path(__file__).resolve().parents[1]
    binary = tmp_path / "emulation"
    subprocess.run(
        [
            compiler,
            "-std=c++17",
            "-O2",
            f"-I{root / 'csrc'}",
            *(f"-I{p}" for p in include_paths()),
            str(root / "tests" / "cpp" / "conv_transpose_tiles_emulation.cpp"),
            "-o",
            str(binary),
        ],
        check=True,
    )
    result = subprocess.run([str(binary)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-4000:]
    assert "0 failures" in result.stdout
