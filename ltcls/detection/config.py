"""The ``detection:`` config section, owned by the detection plug-in (declared in :mod:`ltcls.detection`, read only
for detection datasets). Torch-free: the command line resolves configs before importing anything heavy."""

from __future__ import annotations

from dataclasses import dataclass, field

from ltcls.config import check_range
from ltcls.registries import CONFIG_SECTIONS


@CONFIG_SECTIONS.register("detection")
@dataclass
class DetectionConfig:
    """``detection:`` Mask R-CNN settings, read only when ``data`` is a detection dataset (``lvis``).

    ``min_size`` / ``max_size``: the detector's resize (one ``min_size`` drawn per training image, the
    last one at test time, as torchvision's ``GeneralizedRCNNTransform``). Test-time post-processing:
    ``score_thresh``, ``detections_per_img``, per-class NMS at ``nms_thresh`` (LVIS: 1e-4, 300; GOL
    uses NMS 0.3); ``mask_threshold`` binarizes the mask probabilities. ``normalized_mask``: the mask
    predictor's 1x1 logits conv normalized (Seesaw, Sec. 3.3), temperature ``mask_tau``. Head sizes
    (torchvision's defaults; smaller for CPU toys): ``fpn_channels``, ``box_head_dim``,
    ``mask_head_layers``, ``box_batch_size_per_image`` (RoIs sampled per image). ``trainable_backbone_layers``:
    ``null`` is torchvision's rule (3 with pretrained weights, all 5 without).
    """

    min_size: list[int] = field(default_factory=lambda: [640, 672, 704, 736, 768, 800])
    max_size: int = 1333
    score_thresh: float = 1e-4
    detections_per_img: int = 300
    nms_thresh: float = 0.5
    mask_threshold: float = 0.5
    normalized_mask: bool = False
    mask_tau: float = 20.0
    fpn_channels: int = 256
    box_head_dim: int = 1024
    mask_head_layers: list[int] = field(default_factory=lambda: [256, 256, 256, 256])
    box_batch_size_per_image: int = 512
    trainable_backbone_layers: int | None = None

    def __post_init__(self) -> None:
        check_range("detection", self, {
            "min_size": (1, None, "sizes >= 1"), "max_size": (1, None, "an integer >= 1"),
            "score_thresh": (0, 1, "a value in [0, 1)"), "detections_per_img": (1, None, "an integer >= 1"),
            "nms_thresh": (0, 1.000001, "a value in [0, 1]"), "mask_threshold": (0, 1, "a value in [0, 1)"),
            "mask_tau": (0, None, "a value > 0"), "box_batch_size_per_image": (1, None, "an integer >= 1"),
            "trainable_backbone_layers": (0, 6, "an integer in 0..5 or null")})
