"""Python-side registrations of the fastops operators, one module per family:
fake (meta) kernels and autograd formulas for the C++ ops in ``fastops._C``,
and the Triton ops with theirs."""
