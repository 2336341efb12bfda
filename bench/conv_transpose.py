"""Benchmark cases of conv_transpose2d against torch.nn.functional.conv_transpose2d
(cuDNN on the GPU with ``torch.backends.cudnn.benchmark=True`` and TF32 off;
oneDNN/ATen on the CPU), on the decoder shapes of real networks.

The reference is timed in both layouts (NCHW and channels_last) and the faster
counts; fastops rows exist per input layout. Achieved TFLOP/s count only useful
work: the (input, tap) products that land inside the output (no inserted zeros,
no taps cropped by padding); forward+backward counts forward, grad_input and
grad_weight (3x the forward). The byte floor is input + weight + output once
(x3 with the backward: grad_output read, gradients written).

Shapes (batch on GPU / on CPU, where a full batch would take seconds a call):
U-Net 2x2 s2 1024->512 @28, 512->256 @52, 256->128 @100, 128->64 @196 (8 / 1);
the Mask R-CNN mask head 256->256 2x2 s2 @14 (1000 / 100 RoIs); TernausNet11
3x3 s2 p1 op1 512->256 @32, 256->64 @128, 128->32 @256 (8 / 1); FCN-8s
upscore2 21->21 4x4 s2 @16 and upscore8 16x16 s8 @70 (1 / 1); DCGAN 4x4 s2 p1
512->256 @8 and 256->128 @16 (64 / 16).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import fastops
from bench.cases import Case

FAMILY = "conv_transpose"

# (network, C_in, C_out, H, kernel, stride, padding, output_padding, batch on GPU, batch on CPU)
SHAPES = [
    ("U-Net up1", 1024, 512, 28, 2, 2, 0, 0, 8, 1),
    ("U-Net up2", 512, 256, 52, 2, 2, 0, 0, 8, 1),
    ("U-Net up3", 256, 128, 100, 2, 2, 0, 0, 8, 1),
    ("U-Net up4", 128, 64, 196, 2, 2, 0, 0, 8, 1),
    ("Mask R-CNN mask head", 256, 256, 14, 2, 2, 0, 0, 1000, 100),
    ("TernausNet11 dec5", 512, 256, 32, 3, 2, 1, 1, 8, 1),
    ("TernausNet11 dec3", 256, 64, 128, 3, 2, 1, 1, 8, 1),
    ("TernausNet11 dec2", 128, 32, 256, 3, 2, 1, 1, 8, 1),
    ("FCN-8s upscore2", 21, 21, 16, 4, 2, 0, 0, 1, 1),
    ("FCN-8s upscore8", 21, 21, 70, 16, 8, 0, 0, 1, 1),
    ("DCGAN G2", 512, 256, 8, 4, 2, 1, 0, 64, 16),
    ("DCGAN G3", 256, 128, 16, 4, 2, 1, 0, 64, 16),
]
QUICK = ["U-Net up3", "TernausNet11 dec5"]


def useful_pairs(size: int, kernel: int, stride: int, padding: int, out: int) -> int:
    """(input, tap) pairs along one axis whose output lies inside [0, out)."""
    return sum(1 for i in range(size) for t in range(kernel) if 0 <= i * stride - padding + t < out)


def useful_flops(batch, cin, cout, size, kernel, stride, padding, out) -> int:
    pairs = useful_pairs(size, kernel, stride, padding, out)
    return 2 * batch * cin * cout * pairs * pairs


class _TorchBothLayouts:
    """torch's conv_transpose2d on the NCHW and the channels_last copy of the input."""

    def __init__(self, x, weight, bias, stride, padding, output_padding):
        self.inputs = {
            "NCHW": x.contiguous(),
            "channels_last": x.contiguous(memory_format=torch.channels_last),
        }
        self.weight, self.bias = weight, bias
        self.args = (stride, padding, output_padding)

    def forward(self, layout):
        x = self.inputs[layout]
        weight = (
            self.weight.contiguous(memory_format=torch.channels_last)
            if layout == "channels_last"
            else self.weight
        )
        return lambda: F.relu(F.conv_transpose2d(x, weight, self.bias, *self.args))

    def forward_backward(self, layout, grad):
        x = self.inputs[layout].detach().requires_grad_()
        weight = self.weight.detach().requires_grad_()
        bias = self.bias.detach().requires_grad_()
        grad = (
            grad.contiguous(memory_format=torch.channels_last)
            if layout == "channels_last"
            else grad
        )

        def run():
            x.grad = weight.grad = bias.grad = None
            F.relu(F.conv_transpose2d(x, weight, bias, *self.args)).backward(grad)

        return run


def cases(device: torch.device, quick: bool = False) -> list[Case]:
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    dtypes = [torch.float32] if quick else [torch.float32, torch.bfloat16]
    result = []
    for dtype in dtypes:
        for name, cin, cout, size, k, s, p, op, gpu_batch, cpu_batch in SHAPES:
            if quick and name not in QUICK:
                continue
            batch = gpu_batch if device.type == "cuda" else cpu_batch
            out = (size - 1) * s - 2 * p + k + op
            x = torch.randn(batch, cin, size, size, device=device, dtype=dtype)
            weight = (
                torch.randn(cin, cout, k, k, device=device) / (cin * k * k / s / s) ** 0.5
            ).to(dtype)
            bias = torch.randn(cout, device=device, dtype=dtype)
            grad = torch.randn(batch, cout, out, out, device=device, dtype=dtype)
            theirs = _TorchBothLayouts(x, weight, bias, s, p, op)
            flops = useful_flops(batch, cin, cout, size, k, s, p, out)
            element = x.element_size()
            io_bytes = (x.numel() + weight.numel() + cout + grad.numel()) * element
            for layout in ("NCHW", "channels_last"):
                x_ours = theirs.inputs[layout]
                grad_ours = (
                    grad.contiguous(memory_format=torch.channels_last)
                    if layout == "channels_last"
                    else grad
                )
                common = dict(
                    family=FAMILY,
                    op="conv_transpose2d",
                    name=name,
                    shape=f"{batch}x{cin}x{size}x{size} -> {cout}x{out}x{out}, k{k} s{s}"
                    + (f" p{p}" if p else "")
                    + (f" op{op}" if op else ""),
                    dtype=dtype,
                    variant=f"{layout}, bias+relu fused",
                    reference_name="F.conv_transpose2d + relu, faster of NCHW / channels_last"
                    + (" (cuDNN, benchmark=True, TF32 off)" if device.type == "cuda" else ""),
                )

                def ours(t, w=weight, b=bias, s=s, p=p, op=op):
                    return fastops.ops.conv_transpose2d(t, w, b, s, p, op, activation="relu")

                def ours_backward(t=x_ours, g=grad_ours, w=weight, b=bias, s=s, p=p, op=op):
                    t = t.detach().requires_grad_()
                    w = w.detach().requires_grad_()
                    b = b.detach().requires_grad_()

                    def run():
                        t.grad = w.grad = b.grad = None
                        fastops.ops.conv_transpose2d(t, w, b, s, p, op, activation="relu").backward(
                            g
                        )

                    return run

                result.append(
                    Case(
                        **common,
                        direction="forward",
                        min_bytes=io_bytes,
                        flops=flops,
                        reference=theirs.forward("NCHW"),
                        references={lay: theirs.forward(lay) for lay in theirs.inputs},
                        run=lambda t=x_ours, f=ours: f(t),
                    )
                )
                if quick and layout == "channels_last":
                    continue
                result.append(
                    Case(
                        **common,
                        direction="forward+backward",
                        min_bytes=3 * io_bytes,
                        flops=3 * flops,
                        reference=theirs.forward_backward("NCHW", grad),
                        references={
                            lay: theirs.forward_backward(lay, grad) for lay in theirs.inputs
                        },
                        run=ours_backward(),
                    )
                )
    return result
