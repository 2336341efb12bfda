"""``patch_torchvision()``: run torchvision's own code on fastops.

torchvision's detection models call ``torchvision.ops`` through names their
modules bound at import time (``from torchvision.ops import MultiScaleRoIAlign``
in ``faster_rcnn``, ``roi_align`` in ``roi_heads`` and ``poolers``,
``box_ops.batched_nms`` in ``rpn`` and ``roi_heads``, ``nms`` inside
``torchvision.ops.boxes``). Replacing ``torchvision.ops.nms`` alone reaches none
of them, so the patch replaces every such binding.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import threading
from types import ModuleType

from fastops.nn.roi import MultiScaleRoIAlign, RoIAlign, RoIPool
from fastops.ops.boxes import batched_nms, nms
from fastops.ops.roi import roi_align, roi_pool

__all__ = ["TorchvisionPatch", "patch_torchvision"]

# (torchvision module that defines the original, its name there, fastops counterpart)
_TARGETS = (
    ("torchvision.ops.boxes", "nms", nms),
    ("torchvision.ops.boxes", "batched_nms", batched_nms),
    ("torchvision.ops.roi_align", "roi_align", roi_align),
    ("torchvision.ops.roi_pool", "roi_pool", roi_pool),
    ("torchvision.ops.roi_align", "RoIAlign", RoIAlign),
    ("torchvision.ops.roi_pool", "RoIPool", RoIPool),
    ("torchvision.ops.poolers", "MultiScaleRoIAlign", MultiScaleRoIAlign),
)

# Process-global state, guarded by _LOCK.
_LOCK = threading.RLock()
_depth = 0  # number of active (not yet undone) patches
_pairs: list[tuple[object, object]] | None = None  # (torchvision original, fastops counterpart)
_saved: list[tuple[ModuleType, str, object, object]] = []  # (module, name, original, counterpart)


def _import_torchvision() -> None:
    """Imports torchvision and every module of ``torchvision.models.detection``, so
    that the names those modules bind exist before they are patched."""
    try:
        import torchvision  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            "fastops.patch_torchvision() needs torchvision, an optional dependency of "
            "fastops that is not installed (pip install 'fastops[torchvision]'); "
            f"importing it failed with: {exc}"
        ) from exc
    import torchvision.models.detection as detection

    for info in pkgutil.iter_modules(detection.__path__, detection.__name__ + "."):
        importlib.import_module(info.name)


def _originals() -> list[tuple[object, object]]:
    """The torchvision originals and their fastops counterparts, read once from the
    modules that define them (before any patch, so they are torchvision's own)."""
    global _pairs
    if _pairs is None:
        pairs = []
        for module_name, name, counterpart in _TARGETS:
            # import_module returns the submodule even where the package attribute of
            # the same name is the function (torchvision.ops.roi_align).
            original = getattr(importlib.import_module(module_name), name)
            if original is counterpart:  # pragma: no cover (someone patched by hand)
                raise RuntimeError(f"{module_name}.{name} is already fastops's {name}")
            pairs.append((original, counterpart))
        _pairs = pairs
    return _pairs


def _torchvision_modules() -> list[ModuleType]:
    return [
        module
        for name, module in sys.modules.copy().items()
        if (name == "torchvision" or name.startswith("torchvision."))
        and isinstance(module, ModuleType)
    ]


def _replace(pairs: list[tuple[object, object]], record: bool) -> None:
    """Sets every attribute of a loaded torchvision module that *is* one of the
    ``pairs``' first objects to the matching second object."""
    by_id = {id(old): (old, new) for old, new in pairs}
    for module in _torchvision_modules():
        for name, value in vars(module).copy().items():
            hit = by_id.get(id(value))
            if hit is None or hit[0] is not value:
                continue
            setattr(module, name, hit[1])
            if record:
                _saved.append((module, name, hit[0], hit[1]))


def _restore() -> None:
    pairs = _originals()
    # The recorded bindings, where they still hold what the patch put there (a name
    # the user set to something else meanwhile keeps the user's value) ...
    for module, name, original, counterpart in reversed(_saved):
        if vars(module).get(name) is counterpart:
            setattr(module, name, original)
    _saved.clear()
    # ... and those of torchvision modules first imported while patched, which
    # bound the fastops counterparts.
    _replace([(new, old) for old, new in pairs], record=False)


class TorchvisionPatch:
    """The handle :func:`patch_torchvision` returns: ``undo()`` ends the patch, and
    so does leaving a ``with`` block on it. ``active`` is True until then."""

    def __init__(self) -> None:
        self._active = True

    @property
    def active(self) -> bool:
        return self._active

    def undo(self) -> None:
        """Ends this patch; a second call does nothing. torchvision gets its own
        objects back when the last active patch ends."""
        global _depth
        with _LOCK:
            if not self._active:
                return
            self._active = False
            _depth -= 1
            if _depth == 0:
                _restore()

    def __enter__(self) -> TorchvisionPatch:
        if not self._active:
            raise RuntimeError(
                "this torchvision patch was undone; call fastops.patch_torchvision() again"
            )
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        self.undo()  # exceptions raised in the block propagate

    def __repr__(self) -> str:
        return f"<fastops TorchvisionPatch {'active' if self._active else 'undone'}>"


def patch_torchvision() -> TorchvisionPatch:
    """Makes torchvision, its detection models included, use fastops for
    ``nms``, ``batched_nms``, ``roi_align``, ``roi_pool``, ``RoIAlign``, ``RoIPool``
    and ``MultiScaleRoIAlign``, until the returned handle is undone::

        with fastops.patch_torchvision():
            model = torchvision.models.detection.maskrcnn_resnet50_fpn(weights=...)
            detections = model(images)

        patch = fastops.patch_torchvision()  # or as a plain call
        ...
        patch.undo()  # idempotent

    **What is replaced.** It imports torchvision and ``torchvision.models.detection``
    with all its submodules, then sets every attribute of every loaded
    ``torchvision.*`` module that *is* (by identity) one of the seven torchvision
    originals to the fastops counterpart (:func:`fastops.ops.nms`,
    :func:`~fastops.ops.batched_nms`, :func:`~fastops.ops.roi_align`,
    :func:`~fastops.ops.roi_pool`, :class:`fastops.nn.RoIAlign`,
    :class:`~fastops.nn.RoIPool`, :class:`~fastops.nn.MultiScaleRoIAlign`): the
    package names (``torchvision.ops.nms``, ...), the defining modules'
    (``torchvision.ops.boxes.nms``, whose module globals torchvision's private
    ``batched_nms`` helpers call; the function ``torchvision.ops.roi_align.roi_align``
    inside the submodule that the package attribute of the same name shadows) and
    the names other torchvision modules imported
    (``torchvision.ops.poolers.roi_align``, ``...detection.roi_heads.roi_align``,
    ``...detection.faster_rcnn.MultiScaleRoIAlign``, ``mask_rcnn``'s and
    ``keypoint_rcnn``'s). Nothing else is touched (``box_iou``, ``torchvision.ops.misc``,
    ``torchvision.extension._assert_has_ops``, ...), nor modules outside
    ``torchvision``: a ``from torchvision.ops import nms`` in your own code, run
    before the patch, keeps torchvision's function.

    **Undo.** Undoing restores exactly the objects that were there (a name you set
    to something else while patched keeps your value), also in torchvision modules
    first imported while patched. Patches nest: torchvision stays patched until
    every active handle is undone, in any order; ``with`` blocks therefore restore
    in LIFO order. A ``with`` block undoes the patch even when it raises, and the
    exception propagates.

    **Models and modules.** A module constructed while patched is a fastops module
    (a model built inside gets :class:`fastops.nn.MultiScaleRoIAlign` box and mask
    poolers, with torchvision's attributes and an identical, empty ``state_dict``)
    and stays one after the patch ends. A model built *before* the patch keeps its
    torchvision ``MultiScaleRoIAlign`` instances, but while patched they pool each
    level with fastops's ``roi_align`` (torchvision's pooler calls the module global
    ``roi_align``), and its RPN and box head suppress with fastops's
    ``batched_nms``; only the one-launch multi-level pooling of fastops's
    ``MultiScaleRoIAlign`` is missing. torchvision's constructors check
    ``isinstance(box_roi_pool, MultiScaleRoIAlign)`` against the patched name, so
    passing a torchvision ``MultiScaleRoIAlign`` made before the patch to
    ``FasterRCNN``/``MaskRCNN``/``KeypointRCNN`` inside it raises torchvision's
    ``TypeError``, as does passing a fastops one outside it.

    **Threads.** The patch is process-global: while it is active every thread sees
    the fastops objects. Applying and undoing are serialised by a lock, but code
    running torchvision in another thread at that moment may see either version.

    Raises ``ImportError`` when torchvision is not installed (it is an optional
    dependency: ``pip install 'fastops[torchvision]'``).
    """
    global _depth
    with _LOCK:
        _import_torchvision()
        try:
            _replace(_originals(), record=True)
        except BaseException:
            if _depth == 0:  # leave torchvision as it was
                _restore()
            raise
        _depth += 1
        return TorchvisionPatch()
