"""fastops benchmarks: ``python -m bench`` (or ``make bench``).

One module per operator family (``bench/unpooling.py``, ...) lists its cases:
shapes from real networks, a byte model of what each call must move, the
PyTorch implementation it replaces and the fastops backends to time.
``bench/__main__.py`` times them on the devices present and writes
``bench/results/<device>.{json,md}`` and a plot per family.
"""
