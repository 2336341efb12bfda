"""The segmentation reference models (FCN8s, SegNet, UNet, TernausNet11,
FPNSegmentation): every fastops backend against the same network on PyTorch's
operators, state_dicts moving between the two operator sets, the bilinear
initialisation of the learnable upsamplings, TernausNet's VGG11 weights,
training, torch.compile, and argument checking."""

from __future__ import annotations

import pickle
import re
from copy import deepcopy

import pytest
import torch
import torch.nn.functional as F
import torchvision
from conftest import BACKEND_CASES
from torch import nn

import fastops
from fastops.data import SyntheticShapes, segmentation_collate
from fastops.models.segmentation import FCN8s, FPNSegmentation, SegNet, TernausNet11, UNet
from fastops.models.segmentation._layers import bilinear_kernel

NUM_CLASSES = 3

# Tiny widths: the point is the wiring and the operators, not capacity.
BUILDERS = {
    "fcn8s": lambda operators: FCN8s(NUM_CLASSES, base_channels=4, operators=operators),
    "segnet": lambda operators: SegNet(NUM_CLASSES, base_channels=4, operators=operators),
    "unet": lambda operators: UNet(NUM_CLASSES, base_channels=4, depth=3, operators=operators),
    "ternausnet11": lambda operators: TernausNet11(NUM_CLASSES, num_filters=2, operators=operators),
    "fpn": lambda operators: FPNSegmentation(
        NUM_CLASSES,
        backbone_widths=(8, 8, 16, 16),
        backbone_blocks=(1, 1, 1, 1),
        fpn_channels=8,
        head_channels=8,
        operators=operators,
    ),
}
# Non-square where the model allows it; SegNet takes any size. FPN's 32x64
# keeps two pixels at stride 32.
INPUT_SIZES = {
    "fcn8s": (32, 32),
    "segnet": (20, 27),
    "unet": (16, 24),
    "ternausnet11": (32, 32),
    "fpn": (32, 64),
}
# Triton's interpreter pays per program instance and per launch: one image of
# the smallest size each model takes.
TRITON_INPUT_SIZES = {
    "fcn8s": (32, 32),
    "segnet": (9, 13),
    "unet": (8, 16),
    "ternausnet11": (32, 32),
    "fpn": (32, 32),
}
MODEL_NAMES = list(BUILDERS)


def build(name: str, operators: str = "fastops", device="cpu", dtype=torch.float32) -> nn.Module:
    return BUILDERS[name](operators).to(device, dtype)


def images(
    name: str, batch: int = 2, device="cpu", dtype=torch.float32, sizes=INPUT_SIZES
) -> torch.Tensor:
    return torch.randn(batch, 3, *sizes[name], device=device, dtype=dtype)


@torch.no_grad()
def perturb_(model: nn.Module) -> nn.Module:
    """Moves every weight, bias and norm statistic off its initial value (zeros,
    ones, the symmetric bilinear kernels), so that a transposed weight, a wrong
    index or a dropped bias changes the output; magnitudes stay those of He
    initialisation, so activations stay of order one."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
            weight = module.weight
            taps = weight.shape[2] * weight.shape[3]
            if isinstance(module, nn.ConvTranspose2d):
                fan_in = weight.shape[0] * taps / (module.stride[0] * module.stride[1])
            else:
                fan_in = weight.shape[1] * taps
            weight.add_(torch.randn_like(weight) * (0.5 / fan_in) ** 0.5)
            if module.bias is not None:
                module.bias.normal_(0, 0.1)
        elif isinstance(module, nn.BatchNorm2d | nn.GroupNorm):
            module.weight.uniform_(0.5, 1.5)
            module.bias.normal_(0, 0.1)
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    return model


def forward_backward(model: nn.Module, x: torch.Tensor, probe: torch.Tensor):
    """Output, input gradient and parameter gradients of ``sum(model(x) * probe)``."""
    model.zero_grad(set_to_none=True)
    x = x.detach().requires_grad_(True)
    out = model(x)
    (out * probe).sum().backward()
    grads = {name: p.grad for name, p in model.named_parameters()}
    return out.detach(), x.grad, grads


def assert_close(
    actual: torch.Tensor, expected: torch.Tensor, rel: float, what: str = "", scale=None
):
    """Agreement up to ``rel`` of ``scale`` (by default the largest magnitude of
    ``expected``): sums of many products in another order differ by a few ulps
    of their largest terms."""
    if scale is None:
        scale = expected.abs().max().item()
    torch.testing.assert_close(
        actual.cpu(),
        expected.cpu(),
        rtol=rel,
        atol=rel * max(scale, 1e-6),
        msg=lambda m: f"{what}: {m}",
    )


def assert_same_gradients(actual: dict, expected: dict, rel: float) -> None:
    """Every parameter's gradient, up to ``rel`` of the largest gradient of the
    network: some gradients vanish analytically (a bias before a training-mode
    batch norm) and are rounding noise in both."""
    assert actual.keys() == expected.keys()
    assert all(grad is not None for grad in expected.values())
    scale = max(grad.abs().max().item() for grad in expected.values())
    for name, grad in expected.items():
        assert actual[name] is not None, f"{name} got no gradient"
        assert torch.isfinite(actual[name]).all(), f"{name}: non-finite gradient"
        assert_close(actual[name], grad, rel, what=f"gradient of {name}", scale=scale)


# --- the architectures against the papers and torchvision --------------------------------------


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def layer_shapes(module: nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    """The convolution and batch norm layers, in order, with their weight shapes."""
    return [
        (type(m).__name__, tuple(m.weight.shape))
        for m in module.modules()
        if isinstance(m, nn.Conv2d | nn.BatchNorm2d)
    ]


def test_fcn8s_is_vgg16_with_the_fcn8s_head():
    """Full size, without batch norm: VGG16's layers (fc6/fc7 as 7x7 and 1x1
    convolutions, the same parameters), fc8 replaced by the three score layers
    and the three upsamplings of 21-class PASCAL VOC."""
    with torch.device("meta"):
        model = FCN8s(21, batch_norm=False)
        vgg16 = torchvision.models.vgg16()
    encoder = [*model.encoder.parameters(), *model.fc6.parameters(), *model.fc7.parameters()]
    vgg16_layers = [*vgg16.features.parameters(), *vgg16.classifier[:-1].parameters()]
    assert [p.numel() for p in encoder] == [p.numel() for p in vgg16_layers]
    assert layer_shapes(model.encoder) == layer_shapes(vgg16.features)
    scores = (4096 + 512 + 256 + 3) * 21
    upsamplings = 21 * 21 * (4 * 4 + 4 * 4 + 16 * 16)
    fc8 = parameter_count(vgg16.classifier[-1])
    assert parameter_count(model) == parameter_count(vgg16) - fc8 + scores + upsamplings


def test_segnet_is_vgg16_bn_and_its_mirror():
    """The encoder is torchvision's vgg16_bn features layer for layer (without
    the convolution biases that batch norm cancels); the whole network has the
    paper's 29.5 million parameters (CamVid's 11 classes)."""
    with torch.device("meta"):
        model = SegNet(11)
        vgg16_bn = torchvision.models.vgg16_bn()
    assert layer_shapes(model.encoder) == layer_shapes(vgg16_bn.features)
    assert abs(parameter_count(model) - 29.5e6) < 0.1e6
    decoder_convs = [m for m in model.decoder.modules() if isinstance(m, nn.Conv2d)]
    assert len(decoder_convs) + 1 == 13  # with the classifier, as many as the encoder


def test_unet_has_the_papers_layers():
    """Without batch norm: the paper's 23 convolutions (figure 1), widths 64..1024."""
    with torch.device("meta"):
        model = UNet(2, in_channels=1, batch_norm=False)
    down = [(1, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256)]
    down += [(256, 512), (512, 512), (512, 1024), (1024, 1024)]
    up = [(1024, 512), (512, 256), (256, 128), (128, 64)]
    decoder = [(1024, 512), (512, 512), (512, 256), (256, 256), (256, 128), (128, 128)]
    decoder += [(128, 64), (64, 64)]
    expected = sum(9 * i * o + o for i, o in down + decoder)
    expected += sum(4 * i * o + o for i, o in up) + 64 * 2 + 2
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)]
    assert len(convs) == 23
    assert parameter_count(model) == expected


# --- every backend against the same network on PyTorch's operators ----------------------------


# FCN-8s's 16x16 stride-8 upsampling is 64 phases and 256 taps: about 20 s in
# Triton's interpreter (the other models: 0.5-10 s).
MODEL_BACKEND_CASES = [
    pytest.param(
        name,
        *case.values,
        id=f"{name}-{case.id}",
        marks=(
            *case.marks,
            *([pytest.mark.slow] if (name, case.values[1]) == ("fcn8s", "triton") else []),
        ),
    )
    for name in MODEL_NAMES
    for case in BACKEND_CASES
]


@pytest.mark.parametrize(("name", "device", "backend"), MODEL_BACKEND_CASES)
def test_every_backend_matches_torch_operators(name, device, backend):
    """Output shape, forward and backward on each backend, against the twin built
    on PyTorch's operators with the same state_dict (so the backends agree with
    each other too): output, input gradient and every parameter's gradient.

    In float64, so that the agreement can be tight: the norms of the tiny
    stride-32 maps (a few values per group in the FPN) amplify float32 rounding
    to ~1e-3 in the gradients. The training, compile and upsampling tests run
    in float32."""
    dtype = torch.float64
    model = perturb_(build(name, "fastops", device, dtype)).eval()
    twin = build(name, "torch", device, dtype).eval()
    twin.load_state_dict(model.state_dict())
    if backend == "triton":
        x = images(name, 1, device, dtype, TRITON_INPUT_SIZES)
    else:
        x = images(name, 2, device, dtype)
    probe = torch.randn(x.shape[0], NUM_CLASSES, *x.shape[-2:], device=device, dtype=dtype)

    with fastops.use_backend(backend):
        out, grad_x, grads = forward_backward(model, x, probe)
    expected, expected_grad_x, expected_grads = forward_backward(twin, x, probe)

    assert out.shape == (x.shape[0], NUM_CLASSES, *x.shape[-2:]) and out.dtype == dtype
    assert torch.isfinite(out).all() and torch.isfinite(grad_x).all()
    assert expected.abs().max() > 0.1  # a live network, not a constant
    assert_close(out, expected, 1e-10, what="output")
    assert_close(grad_x, expected_grad_x, 1e-10, what="input gradient")
    assert_same_gradients(grads, expected_grads, 1e-10)


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_channels_last_input_gives_the_same_output(name, backend):
    """A channels_last model and input (the convolutions then hand the fastops
    operators channels_last maps, which they compute without layout copies)."""
    model = perturb_(build(name, dtype=torch.float64)).eval()
    x = images(name, dtype=torch.float64)
    with torch.no_grad(), fastops.use_backend(backend):
        expected = model(x)
        model = model.to(memory_format=torch.channels_last)
        out = model(x.contiguous(memory_format=torch.channels_last))
    assert_close(out, expected, 1e-10, what="channels_last output")


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_models_call_the_fastops_operators(name):
    """operators="fastops" really routes through fastops (a backend that cannot
    run on CPU tensors is refused), operators="torch" never does."""
    x = images(name, batch=1)
    with torch.no_grad(), fastops.use_backend("cuda"):
        with pytest.raises(fastops.BackendUnavailableError):
            build(name, "fastops").eval()(x)
        assert build(name, "torch").eval()(x).shape == (1, NUM_CLASSES, *x.shape[-2:])


@pytest.mark.parametrize("operators", ["fastops", "torch"])
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_models_pickle_and_deepcopy(name, operators):
    """torch.save(model), multiprocessing and copy.deepcopy need it."""
    model = perturb_(build(name, operators)).eval()
    x = images(name, batch=1)
    with torch.no_grad():
        expected = model(x)
        for copy in (pickle.loads(pickle.dumps(model)), deepcopy(model)):
            assert torch.equal(copy(x), expected)


# --- state_dicts move between the operator sets -------------------------------------------------


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_state_dict_moves_from_torch_to_fastops_operators(name):
    """A model trained on PyTorch's operators loads into fastops's (same keys and
    shapes) and computes the same thing, in training mode: batch statistics,
    dropout, the running statistics they update, and the gradients (float64, as
    above)."""
    dtype = torch.float64
    source = perturb_(build(name, "torch", dtype=dtype)).train()
    target = build(name, "fastops", dtype=dtype).train()
    assert {k: v.shape for k, v in source.state_dict().items()} == {
        k: v.shape for k, v in target.state_dict().items()
    }
    target.load_state_dict(source.state_dict())
    x = images(name, dtype=dtype)
    probe = torch.randn(2, NUM_CLASSES, *x.shape[-2:], dtype=dtype)
    seed = int(torch.randint(2**31, ()))

    torch.manual_seed(seed)  # the same dropout masks (FCN's fc6/fc7)
    expected, expected_grad_x, expected_grads = forward_backward(source, x, probe)
    torch.manual_seed(seed)
    out, grad_x, grads = forward_backward(target, x, probe)

    assert_close(out, expected, 1e-9, what="output")
    assert_close(grad_x, expected_grad_x, 1e-9, what="input gradient")
    assert_same_gradients(grads, expected_grads, 1e-9)
    expected_buffers = dict(source.named_buffers())
    for key, buffer in target.named_buffers():
        assert_close(buffer, expected_buffers[key], 1e-12, what=key)


# --- bilinear initialisation --------------------------------------------------------------------


def test_bilinear_kernel_is_the_fcn_kernel():
    """FCN's upsample_filt by hand: a triangle of half-width ceil(k / 2), centred."""
    assert torch.equal(bilinear_kernel(4)[1], torch.tensor([0.25, 0.75, 0.75, 0.25]) * 0.75)
    row = torch.tensor([1, 3, 5, 7, 9, 11, 13, 15, 15, 13, 11, 9, 7, 5, 3, 1]) / 16
    assert torch.equal(bilinear_kernel(16), torch.outer(row, row))
    assert torch.equal(bilinear_kernel(3)[1], torch.tensor([0.5, 1.0, 0.5]))


UPSAMPLINGS = [
    ("fcn8s", "upscore2", 2),
    ("fcn8s", "upscore_pool4", 2),
    ("fcn8s", "upscore8", 8),
    ("fpn", "heads.3.1", 2),
    ("fpn", "upsample", 4),
]


@pytest.mark.parametrize("operators", ["fastops", "torch"])
@pytest.mark.parametrize(("name", "layer", "factor"), UPSAMPLINGS)
def test_upsamplings_start_as_bilinear_interpolation(name, layer, factor, operators):
    """Each learnable upsampling starts as F.interpolate(mode="bilinear",
    align_corners=False) of every channel on its own, exactly away from the
    borders (where the transposed convolution reads zeros, not the edge)."""
    upsampling = build(name, operators).get_submodule(layer)
    assert isinstance(upsampling, nn.ConvTranspose2d)
    assert upsampling.bias is None
    assert upsampling.stride == (factor, factor)
    channels = upsampling.in_channels
    x = torch.randn(2, channels, 5, 7)
    with torch.no_grad():
        out = upsampling(x)
    expected = F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)
    assert out.shape == expected.shape == (2, channels, 5 * factor, 7 * factor)
    border = factor // 2
    interior = (..., slice(border, -border), slice(border, -border))
    torch.testing.assert_close(out[interior], expected[interior], rtol=1e-6, atol=1e-6)
    assert not torch.allclose(out[..., 0, :], expected[..., 0, :])  # zeros beyond the edge


def test_fcn8s_starts_from_zero_scores():
    """The paper's zero-initialised score layers: the untrained FCN-8s predicts
    uniform class probabilities, and the skip branches start closed."""
    model = build("fcn8s").eval()
    with torch.no_grad():
        out = model(images("fcn8s"))
    assert torch.equal(out, torch.zeros_like(out))


# --- TernausNet11 and torchvision's VGG11 -------------------------------------------------------


@pytest.fixture(scope="module")
def vgg11():
    return torchvision.models.vgg11(weights=None).eval()


@pytest.fixture(scope="module")
def vgg11_file(vgg11, tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "vgg11.pth"
    torch.save(vgg11.state_dict(), path)
    return path


def assert_encoder_is_vgg11_features(model: TernausNet11, vgg11) -> None:
    features = vgg11.features.state_dict()
    encoder = model.encoder.state_dict()
    assert encoder.keys() == features.keys()
    for key, value in features.items():
        assert torch.equal(encoder[key], value), key
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.encoder(x), vgg11.features(x), rtol=0, atol=0)


def test_ternausnet_loads_a_torchvision_vgg11_state_dict(vgg11, vgg11_file):
    model = TernausNet11(2, num_filters=4, pretrained=vgg11_file)
    assert_encoder_is_vgg11_features(model, vgg11)
    # The decoder is untouched and the whole network runs.
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 2, 32, 32)


def test_ternausnet_loads_vgg11_features_alone(vgg11, tmp_path):
    path = tmp_path / "features.pth"
    torch.save(vgg11.features.state_dict(), path)
    assert_encoder_is_vgg11_features(TernausNet11(2, num_filters=4, pretrained=str(path)), vgg11)


def test_ternausnet_without_weights_is_randomly_initialised(vgg11):
    a, b = TernausNet11(2, num_filters=4), TernausNet11(2, num_filters=4)
    assert not torch.equal(a.encoder[0].weight, b.encoder[0].weight)
    assert not torch.equal(a.encoder[0].weight, vgg11.features[0].weight)


def _bad_weight_files(vgg11, tmp_path):
    features = vgg11.features.state_dict()
    wrong_key = {("features." + k).replace(".18.", ".17."): v for k, v in features.items()}
    wrong_shape = dict(features, **{"6.weight": torch.zeros(256, 64, 3, 3)})
    cases = {
        "wrong_key": (wrong_key, r"missing features entries \['18\.bias', '18\.weight'\]"),
        "wrong_shape": (wrong_shape, r"features\.6\.weight of shape \(256, 64, 3, 3\)"),
        "not_a_state_dict": ([1, 2, 3], "does not hold a state_dict"),
    }
    for label, (content, message) in cases.items():
        path = tmp_path / f"{label}.pth"
        torch.save(content, path)
        yield path, message
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a checkpoint")
    yield garbage, "cannot read"


def test_ternausnet_bad_weight_files_raise_naming_the_file(vgg11, tmp_path):
    for path, message in _bad_weight_files(vgg11, tmp_path):
        with pytest.raises(ValueError, match=message) as error:
            TernausNet11(2, num_filters=4, pretrained=path)
        assert f"pretrained={str(path)!r}" in str(error.value)
    missing = tmp_path / "missing.pth"
    with pytest.raises(FileNotFoundError, match=re.escape(repr(str(missing)))):
        TernausNet11(2, num_filters=4, pretrained=missing)


def test_ternausnet_weights_need_three_input_channels(vgg11_file):
    with pytest.raises(ValueError, match=r"features\.0\.weight .*\(in_channels=4\)"):
        TernausNet11(2, num_filters=4, in_channels=4, pretrained=vgg11_file)


# --- training ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["segnet", "unet", "fcn8s", "fpn"])
def test_a_few_adam_steps_lower_the_loss(name):
    """Cross-entropy on a fixed batch of SyntheticShapes falls under Adam."""
    dataset = SyntheticShapes(4, image_size=32, num_classes=NUM_CLASSES - 1)
    assert len(dataset.class_names) == NUM_CLASSES
    x, target = segmentation_collate([dataset[i] for i in range(len(dataset))])
    model = build(name).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-2)
    losses = []
    for _ in range(12):
        loss = F.cross_entropy(model(x), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    # Over 12 seeds the last loss was at most 0.57 of the first (U-Net), 0.42 (the others).
    assert losses[-1] < 0.75 * losses[0], losses


# --- torch.compile -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["unet", "segnet"])
def test_torch_compile_fullgraph_matches_eager(name):
    """The whole network traces into one graph (the fastops ops have fake kernels
    and registered autograd) and computes what eager does, gradients included."""
    torch._dynamo.reset()
    model = perturb_(build(name)).eval()
    x = images(name)
    probe = torch.randn(2, NUM_CLASSES, *x.shape[-2:])
    with fastops.use_backend("cpu"):
        expected, expected_grad_x, expected_grads = forward_backward(model, x, probe)
        compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
        out, grad_x, grads = forward_backward(compiled, x, probe)
    assert_close(out, expected, 1e-6, what="output")
    assert_close(grad_x, expected_grad_x, 1e-6, what="input gradient")
    assert_same_gradients(
        {k.removeprefix("_orig_mod."): v for k, v in grads.items()}, expected_grads, 1e-6
    )


# --- argument checking ---------------------------------------------------------------------------

BAD_SIZES = {
    "fcn8s": (48, 32),
    "unet": (16, 20),
    "ternausnet11": (32, 40),
    "fpn": (32, 16),
}


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_bad_inputs_raise_before_running(name):
    model = build(name)
    with pytest.raises(ValueError, match=r"x has 4 channels .* in_channels=3"):
        model(torch.randn(1, 4, *INPUT_SIZES[name]))
    with pytest.raises(ValueError, match=r"x must be \[B, 3, H, W\]"):
        model(torch.randn(3, *INPUT_SIZES[name]))
    with pytest.raises(TypeError, match=r"x must be a torch\.Tensor"):
        model(INPUT_SIZES[name])
    if name in BAD_SIZES:
        height, width = BAD_SIZES[name]
        with pytest.raises(
            ValueError, match=rf"multiples of {model.size_divisor}, got {height}x{width}"
        ):
            model(torch.randn(1, 3, height, width))
    with pytest.raises(ValueError, match="positive multiples"):
        model(torch.randn(1, 3, 0, INPUT_SIZES[name][1]))


def test_segnet_takes_any_size():
    """Ceil-mode pooling and unpooling to the recorded sizes: 1x1 to odd sizes."""
    model = build("segnet").eval()
    for size in ((1, 1), (7, 33), (45, 30)):
        assert model(torch.randn(1, 3, *size)).shape == (1, NUM_CLASSES, *size)


@pytest.mark.parametrize(
    ("cls", "kwargs", "argument"),
    [
        (FCN8s, dict(num_classes=0), "num_classes"),
        (FCN8s, dict(num_classes=3, base_channels=2.5), "base_channels"),
        (FCN8s, dict(num_classes=3, in_channels=0), "in_channels"),
        (FCN8s, dict(num_classes=3, batch_norm="yes"), "batch_norm"),
        (FCN8s, dict(num_classes=3, operators="numpy"), "operators"),
        (SegNet, dict(num_classes=True), "num_classes"),
        (SegNet, dict(num_classes=3, base_channels=-1), "base_channels"),
        (SegNet, dict(num_classes=3, operators="cuda"), "operators"),
        (SegNet, dict(num_classes=3, num_stages=0), "num_stages"),
        (SegNet, dict(num_classes=3, num_stages=6), "num_stages"),
        (UNet, dict(num_classes=3, depth=0), "depth"),
        (UNet, dict(num_classes=3, batch_norm=1), "batch_norm"),
        (UNet, dict(num_classes=3, in_channels="3"), "in_channels"),
        (TernausNet11, dict(num_classes=3, num_filters=0), "num_filters"),
        (TernausNet11, dict(num_classes=3, pretrained=True), "pretrained"),
        (TernausNet11, dict(num_classes=0), "num_classes"),
        (FPNSegmentation, dict(num_classes=3, backbone_widths=(8, 8, 8)), "backbone_widths"),
        (FPNSegmentation, dict(num_classes=3, backbone_blocks=(1, 1, 0, 1)), "backbone_blocks"),
        (FPNSegmentation, dict(num_classes=3, fpn_channels=0), "fpn_channels"),
        (FPNSegmentation, dict(num_classes=3, head_channels=None), "head_channels"),
    ],
)
def test_bad_constructor_arguments_raise_naming_the_argument(cls, kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        cls(**kwargs)


@pytest.mark.parametrize("num_stages", [1, 4])
def test_segnet_with_fewer_stages_matches_its_torch_twin(num_stages):
    """``num_stages`` keeps the first stages of encoder and decoder (4: the
    depth of the paper's SegNet-Basic), on fastops and PyTorch operators alike."""
    model = SegNet(NUM_CLASSES, base_channels=4, num_stages=num_stages).double().eval()
    twin = SegNet(NUM_CLASSES, base_channels=4, num_stages=num_stages, operators="torch")
    twin = twin.double().eval()
    twin.load_state_dict(model.state_dict())
    assert len(model.encoder) == len(model.decoder) == num_stages
    x = torch.randn(2, 3, 21, 30, dtype=torch.float64)
    with fastops.use_backend("cpu"):
        out = model(x)
    assert out.shape == (2, NUM_CLASSES, 21, 30)
    torch.testing.assert_close(out, twin(x), rtol=1e-10, atol=1e-10)
