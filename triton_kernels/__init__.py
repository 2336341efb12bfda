"""Triton kernels of fastops, one operator per module, packaged as
``fastops.triton_kernels`` (a top-level ``triton_kernels`` package already
exists in the Triton ecosystem).

Each module holds private ``@triton.jit`` kernels and named launchers that take
and return torch tensors; ``fastops/_registrations`` wraps the launchers as
``torch.ops.fastops.*_triton`` ops. Kernels compute in float32 (float64 for
float64 data) and only move bfloat16/float16 values, which also keeps them
correct under ``TRITON_INTERPRET=1``.
"""
