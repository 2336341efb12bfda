"""RoIAlign, RoIPool and MultiScaleRoIAlign with torchvision's constructors,
attributes and outputs, computed by fastops."""

from __future__ import annotations

import math

import torch

from fastops.ops import roi


class RoIAlign(torch.nn.Module):
    """:class:`torchvision.ops.RoIAlign`: :func:`fastops.ops.roi_align` as a module."""

    def __init__(
        self,
        output_size: int | tuple[int, int],
        spatial_scale: float,
        sampling_ratio: int,
        aligned: bool = False,
    ):
        super().__init__()
        self.output_size = output_size
        self.spatial_scale = spatial_scale
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned

    def forward(self, input: torch.Tensor, rois: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
        return roi.roi_align(
            input, rois, self.output_size, self.spatial_scale, self.sampling_ratio, self.aligned
        )

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}(output_size={self.output_size}, "
            f"spatial_scale={self.spatial_scale}, sampling_ratio={self.sampling_ratio}, "
            f"aligned={self.aligned})"
        )


class RoIPool(torch.nn.Module):
    """:class:`torchvision.ops.RoIPool`: :func:`fastops.ops.roi_pool` as a module."""

    def __init__(self, output_size: int | tuple[int, int], spatial_scale: float):
        super().__init__()
        self.output_size = output_size
        self.spatial_scale = spatial_scale

    def forward(self, input: torch.Tensor, rois: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
        return roi.roi_pool(input, rois, self.output_size, self.spatial_scale)

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}(output_size={self.output_size}, "
            f"spatial_scale={self.spatial_scale})"
        )


def _infer_scale(feature: torch.Tensor, original_size: tuple[int, int]) -> float:
    """The power of two nearest to feature size / image size (torchvision's rule,
    rounding log2 half to even as torch.round does)."""
    approx = float(feature.shape[-2]) / float(original_size[0])
    return 2.0 ** float(torch.tensor(approx).log2().round())


class LevelMapper:
    """The pyramid level of each box (Lin et al., Feature Pyramid Networks, 2017,
    eq. 1): ``floor(canonical_level + log2(sqrt(area) / canonical_scale) + 1e-6)``
    clamped to ``[k_min, k_max]``, minus ``k_min``. ``mapper(boxes: list[Tensor[L_i, 4]])
    -> Tensor[sum L_i]`` int64, computed on the device (no synchronisation);
    16-bit boxes are measured in float32, as torchvision does."""

    def __init__(
        self, k_min: int, k_max: int, canonical_scale: int = 224, canonical_level: int = 4
    ) -> None:
        self.k_min = k_min
        self.k_max = k_max
        self.canonical_scale = canonical_scale
        self.canonical_level = canonical_level

    def __call__(self, boxes: list[torch.Tensor]) -> torch.Tensor:
        concatenated = torch.cat(boxes, dim=0)
        if concatenated.dtype in (torch.float16, torch.bfloat16):
            concatenated = concatenated.float()
        area = (concatenated[:, 2] - concatenated[:, 0]) * (concatenated[:, 3] - concatenated[:, 1])
        s = torch.sqrt(area)
        target = torch.floor(
            self.canonical_level
            + torch.log2(s / self.canonical_scale)
            + torch.tensor(1e-6, dtype=s.dtype, device=s.device)
        )
        target = torch.clamp(target, min=self.k_min, max=self.k_max)
        return target.to(torch.int64) - self.k_min


class MultiScaleRoIAlign(torch.nn.Module):
    """:class:`torchvision.ops.MultiScaleRoIAlign` (Lin et al., Feature Pyramid
    Networks, 2017, eq. 1): each box is pooled from the pyramid level
    ``floor(canonical_level + log2(sqrt(area) / canonical_scale) + 1e-6)``,
    clamped to the levels present, with ``aligned=False``.

    The level scales are inferred from the feature map and image sizes on the
    first call and kept in ``scales``, with the box-to-level rule in
    ``map_levels`` (torchvision's attributes and rule; set ``scales`` by hand
    and ``map_levels`` is derived from it). Unlike torchvision, which runs
    one ``torch.where`` (a host synchronisation) and one roi_align per level,
    the levels are computed on the device and every level is pooled in one
    kernel launch.

    ``forward(x: dict[str, Tensor], boxes: list[Tensor[L_i, 4]],
    image_shapes: list[(h, w)]) -> Tensor[sum L_i, C, h_out, w_out]``.
    """

    def __init__(
        self,
        featmap_names: list[str],
        output_size: int | tuple[int, int] | list[int],
        sampling_ratio: int,
        *,
        canonical_scale: int = 224,
        canonical_level: int = 4,
    ):
        super().__init__()
        if isinstance(output_size, int):
            output_size = (output_size, output_size)
        self.featmap_names = featmap_names
        self.sampling_ratio = sampling_ratio
        self.output_size = tuple(output_size)
        self.scales: list[float] | None = None
        self.map_levels: LevelMapper | None = None
        self.canonical_scale = canonical_scale
        self.canonical_level = canonical_level

    def _setup_scales(
        self, features: list[torch.Tensor], image_shapes: list[tuple[int, int]]
    ) -> None:
        if self.scales is None:
            if not image_shapes:
                raise ValueError("MultiScaleRoIAlign: image_shapes is empty")
            original = (max(s[0] for s in image_shapes), max(s[1] for s in image_shapes))
            self.scales = [_infer_scale(f, original) for f in features]
        self.map_levels = LevelMapper(
            int(-math.log2(self.scales[0])),
            int(-math.log2(self.scales[-1])),
            self.canonical_scale,
            self.canonical_level,
        )

    def forward(
        self,
        x: dict[str, torch.Tensor],
        boxes: list[torch.Tensor],
        image_shapes: list[tuple[int, int]],
    ) -> torch.Tensor:
        features = [v for k, v in x.items() if k in self.featmap_names]
        if not features:
            raise ValueError(
                f"MultiScaleRoIAlign: none of featmap_names {self.featmap_names} is in x"
            )
        if self.scales is None or self.map_levels is None:
            self._setup_scales(features, image_shapes)
        rois = roi.convert_boxes_to_roi_format(boxes)
        if len(features) == 1:
            return roi.roi_align(
                features[0],
                rois,
                self.output_size,
                spatial_scale=self.scales[0],
                sampling_ratio=self.sampling_ratio,
            )
        return roi.multi_scale_roi_align(
            features,
            rois,
            self.map_levels(boxes),
            self.scales,
            self.output_size,
            self.sampling_ratio,
        )

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}(featmap_names={self.featmap_names}, "
            f"output_size={self.output_size}, sampling_ratio={self.sampling_ratio})"
        )
