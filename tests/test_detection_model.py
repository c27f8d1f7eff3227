"""The Mask R-CNN adapter: CE reproduces torchvision's Mask R-CNN exactly; the Seesaw / Gumbel / DropLoss paths give
the registry losses' values on the captured logits; detection scores follow each loss's rule; normalized mask
prediction; frozen backbone stages; the torchvision pin."""

from __future__ import annotations

import configparser
import copy
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNN, MaskRCNNPredictor

from ltcls import config as C
from ltcls.detection.build import build_detector
from ltcls.detection.heads import NormalizedMaskPredictor, NormedConv2d
from ltcls.detection.model import TORCHVISION_VERSION, LTRoIHeads, build_fpn_backbone
from ltcls.losses.gumbel import gumbel_probs
from ltcls.losses.seesaw_det import SeesawDetLoss

NUM_CLASSES = 3


pytestmark = pytest.mark.usefixtures("one_torch_thread")

COUNTS = np.array([40, 8, 2])  # training images per category
SMALL = {"min_size": [64], "max_size": 64, "fpn_channels": 32, "box_head_dim": 64, "mask_head_layers": [32],
         "box_batch_size_per_image": 64}
KWARGS = {"rpn_pre_nms_top_n_train": 200, "rpn_post_nms_top_n_train": 100, "rpn_pre_nms_top_n_test": 100,
          "rpn_post_nms_top_n_test": 50}


def tiny_cfg(loss: str = "ce", classifier: str = "linear", loss_params: dict | None = None, **detection) -> dict:
    return C.resolve({"data": {"name": "lvis"}, "model": {"name": "resnet18", "kwargs": KWARGS},
                      "classifier": {"name": classifier}, "loss": {"name": loss, **(loss_params or {})},
                      "detection": {**SMALL, **detection}})


def tiny_detector(loss: str = "ce", classifier: str = "linear", seed: int = 0, num_images: int = 50,
                  loss_params: dict | None = None, **detection):
    torch.manual_seed(seed)
    data = SimpleNamespace(num_classes=NUM_CLASSES, class_counts=COUNTS, train=[None] * num_images)
    return build_detector(tiny_cfg(loss, classifier, loss_params, **detection), data)


def batch(n: int = 2, seed: int = 0) -> tuple[list[torch.Tensor], list[dict]]:
    g = torch.Generator().manual_seed(seed)
    images, targets = [], []
    for _ in range(n):
        images.append(torch.rand(3, 64, 64, generator=g))
        boxes = torch.tensor([[4.0, 6.0, 30.0, 28.0], [34.0, 30.0, 60.0, 62.0]])
        masks = torch.zeros(2, 64, 64, dtype=torch.uint8)
        for k, (x1, y1, x2, y2) in enumerate(boxes.int().tolist()):
            masks[k, y1:y2, x1:x2] = 1
        targets.append({"boxes": boxes, "labels": torch.randint(1, NUM_CLASSES + 1, (2,), generator=g),
                        "masks": masks})
    return images, targets


def capture(model) -> dict:
    """Record the box predictor's output and the sampled RoI labels of the next training forward."""
    seen: dict = {}
    model.roi_heads.box_predictor.register_forward_hook(lambda m, i, o: seen.__setitem__("logits", o[0].detach()))
    original = model.roi_heads.select_training_samples

    def select(proposals, targets):
        out = original(proposals, targets)
        seen["labels"] = torch.cat(out[2])
        return out

    model.roi_heads.select_training_samples = select  # instance attribute: this test's spy only
    return seen


def test_torchvision_version_is_pinned():
    cfg = configparser.ConfigParser()
    cfg.read(Path(__file__).parents[1] / "setup.cfg")
    assert f"torchvision=={TORCHVISION_VERSION}" in cfg["options"]["install_requires"]
    assert torchvision.__version__.split("+")[0] == TORCHVISION_VERSION


def test_ce_adapter_reproduces_torchvision_mask_rcnn_exactly():
    """Same weights, same RNG: the adapter with loss 'ce' gives torchvision's loss dict and detections bit for bit."""
    model = tiny_detector("ce")
    rh = model.roi_heads
    assert isinstance(rh, LTRoIHeads) and isinstance(rh.box_predictor, FastRCNNPredictor)
    stock = MaskRCNN(copy.deepcopy(model.backbone), num_classes=None, box_head=copy.deepcopy(rh.box_head),
                     box_predictor=FastRCNNPredictor(64, NUM_CLASSES + 1), mask_head=copy.deepcopy(rh.mask_head),
                     mask_predictor=MaskRCNNPredictor(32, 32, NUM_CLASSES + 1), min_size=64, max_size=64,
                     box_score_thresh=1e-4, box_detections_per_img=300, box_batch_size_per_image=64, **KWARGS)
    stock.load_state_dict(model.state_dict(), strict=True)  # same parameter names: nothing extra, nothing missing
    images, targets = batch()
    model.train()
    stock.train()
    for _ in range(2):
        torch.manual_seed(1)
        ours = model(images, targets)
        torch.manual_seed(1)
        theirs = stock(images, targets)
        assert ours.keys() == theirs.keys()
        for k in theirs:
            assert torch.equal(ours[k], theirs[k]), k
        sum(ours.values()).backward()
        sum(theirs.values()).backward()
        for (name, p), q in zip(model.named_parameters(), stock.parameters()):
            assert torch.equal(p.grad, q.grad), name
    model.eval()
    stock.eval()
    with torch.no_grad():
        a, b = model(images), stock(images)
    for x, y in zip(a, b):
        assert x.keys() == y.keys() and len(x["scores"]) > 0
        for k in x:
            assert torch.equal(x[k], y[k]), k


def test_seesaw_path_gives_the_registry_loss_on_captured_logits():
    model = tiny_detector("seesaw_det", "normalized")
    loss = model.box_classification.loss
    assert isinstance(loss, SeesawDetLoss) and model.roi_heads.box_predictor.cls_score.tau == 20.0
    assert model.roi_heads.box_predictor.cls_score.weight.shape[0] == NUM_CLASSES + 2  # classes + objectness
    reference = copy.deepcopy(loss)  # same cumulative counts before the step
    seen = capture(model)
    model.train()
    losses = model(*batch())
    assert "loss_classifier" not in losses
    logits, labels = seen["logits"], seen["labels"]
    expected = reference.parts(logits, labels)
    for k in ("loss_cls_classes", "loss_cls_objectness"):
        assert torch.allclose(losses[k], expected[k], rtol=0, atol=1e-6), k
    assert torch.equal(loss.cum_samples, reference.cum_samples)
    assert loss.cum_samples.sum() == labels.numel() and (labels == 0).any() and (labels > 0).any()


def test_gumbel_path_is_gol_gumbel_ce_with_a_background_channel():
    """GOL's GumbelCE (plain Gumbel, Table 1): C+1 channels, background RoIs train the background channel with
    target 1 inside the summed, clamped loss; computed here in GOL's own layout (mmdetection: background last)."""
    model = tiny_detector("gumbel")
    cls = model.roi_heads.box_predictor.cls_score
    assert cls.weight.shape[0] == NUM_CLASSES + 1  # a background channel
    assert torch.all(cls.weight == 0.001) and torch.all(cls.bias == -2.0)  # GOL's init, background channel too
    seen = capture(model)
    model.train()
    losses = model(*batch())
    logits, labels = seen["logits"], seen["labels"]
    assert logits.shape[1] == NUM_CLASSES + 1 and (labels == 0).any() and (labels > 0).any()
    # GOL's layout: classes 0..C-1, background channel C; one-hot over C+1 channels, background -> channel C.
    gol_logits = torch.cat([logits[:, 1:], logits[:, :1]], dim=1)
    gol_labels = torch.where(labels > 0, labels - 1, NUM_CLASSES)
    target = F.one_hot(gol_labels, NUM_CLASSES + 1).float()
    p = 1 / torch.exp(torch.exp(-gol_logits.clamp(-4, 10)))  # GOL's activation, as written there
    expected = (F.binary_cross_entropy(p, target, reduction="sum") / len(labels)).clamp(0, 20)
    assert torch.allclose(losses["loss_classifier"], expected, atol=1e-5)
    # Not the C-channel version with all-zero background rows (what ltcls did before).
    no_bg = F.binary_cross_entropy(p[:, :NUM_CLASSES], target[:, :NUM_CLASSES], reduction="sum") / len(labels)
    assert not torch.allclose(expected, no_bg.clamp(0, 20), atol=1e-3)
    # One source for the reduction: the adapter's loss is the registry 'gumbel' loss on the packed logits.
    reg = model.box_classification.loss
    assert torch.equal(model.box_classification.losses(logits, labels)["loss_classifier"], reg(logits, labels))
    # Above the clamp the loss is the clamp and has no gradient (GOL's torch.clamp).
    big = torch.full_like(logits, 8.0).requires_grad_()  # 3 non-target channels x ~8 per RoI > 20
    out = model.box_classification.losses(big, labels)["loss_classifier"]
    out.backward()
    assert out.item() == 20.0 and torch.all(big.grad == 0)


def test_gumbel_drop_path_gives_the_registry_loss_in_its_label_convention():
    model = tiny_detector("gumbel_drop", num_images=100, loss_params={"tail_threshold": 0.1})
    seen = capture(model)
    model.train()
    torch.manual_seed(5)
    model(*batch())
    logits, labels = seen["logits"], seen["labels"]
    adapter = model.box_classification
    mm = torch.where(labels > 0, labels - 1, NUM_CLASSES)  # 0..C-1 classes, C background
    torch.manual_seed(7)
    got = adapter.losses(logits, labels)["loss_classifier"]
    torch.manual_seed(7)
    assert torch.equal(got, adapter.loss(logits[:, 1:], mm))
    # GOL's lambda is a fraction of training images (40, 8, 2 of 100 -> 0.4, 0.08, 0.02 < 0.1: two tail classes);
    # the loss divides by the sum of the counts (50), so the builder rescales lambda by 100 / 50.
    assert adapter.loss.tail.tolist() == [False, True, True]


def test_inference_scores_follow_each_rule():
    """Post-processing uses the loss's scores: softmax (CE), class x objectness (Seesaw), Gumbel probabilities
    without renormalization."""
    proposals = [torch.tensor([[10.0, 10.0, 30.0, 30.0], [40.0, 40.0, 60.0, 60.0]])]
    box_regression = torch.zeros(2, (NUM_CLASSES + 1) * 4)
    for loss in ("ce", "seesaw_det", "gumbel", "gumbel_drop"):
        rh = tiny_detector(loss, "normalized" if loss == "seesaw_det" else "linear").roi_heads
        width = rh.box_classification.packed_width
        logits = torch.randn(2, width, generator=torch.Generator().manual_seed(0)) * 3
        if loss.startswith("gumbel"):
            logits = logits / 6
            logits[:, 0] = 0.0 if loss == "gumbel_drop" else 3.0  # gumbel: a confident background channel
            logits[0, 1:3] = 4.0  # two classes both very likely: Gumbel scores ~0.98 each, softmax would halve them
        (boxes,), (scores,), (labels,) = rh.postprocess_detections(logits, box_regression, proposals, [(64, 64)])
        if loss == "ce":
            expected = logits.softmax(-1)
        elif loss == "seesaw_det":
            obj = logits[:, NUM_CLASSES:].softmax(-1)
            expected = torch.cat([obj[:, :1], logits[:, :NUM_CLASSES].softmax(-1) * obj[:, 1:]], dim=1)
            assert torch.allclose(expected.sum(1), torch.ones(2))
        else:
            # gumbel: Gumbel probabilities of every channel, the background channel (column 0) dropped, not used;
            # gumbel_drop: no background logit (its packed column 0 is padding).
            expected = gumbel_probs(logits) if loss == "gumbel" else F.pad(gumbel_probs(logits[:, 1:]), (1, 0))
            assert scores.max() > 0.9 and (scores > 0.9).sum() == 2
        roi = (boxes[:, 0] > 35).long()  # which proposal each detection came from
        assert torch.allclose(scores, expected[roi, labels], atol=1e-6), loss
        assert (labels > 0).all() and len(scores) == int((expected[:, 1:] > 1e-4).sum())


def test_normalized_mask_prediction():
    conv = NormedConv2d(8, 4, 1, tau=20.0)
    x = torch.randn(2, 8, 5, 5)
    w = conv.weight / (conv.weight.norm(dim=1, keepdim=True) + 1e-6)
    xn = 20.0 * x / (x.norm(dim=1, keepdim=True) + 1e-6)
    assert torch.allclose(conv(x), F.conv2d(xn, w, conv.bias), atol=1e-5)
    assert torch.allclose(conv(5 * x), conv(x), atol=1e-4)  # invariant to the feature scale
    model = tiny_detector("seesaw_det", "normalized", normalized_mask=True, mask_tau=20.0)
    pred = model.roi_heads.mask_predictor
    assert isinstance(pred, NormalizedMaskPredictor) and isinstance(pred, MaskRCNNPredictor)
    assert isinstance(pred.mask_fcn_logits, NormedConv2d) and pred.mask_fcn_logits.out_channels == NUM_CLASSES + 1
    model.train()
    losses = model(*batch())
    losses["loss_mask"].backward()
    assert pred.mask_fcn_logits.weight.grad.abs().sum() > 0
    assert type(tiny_detector("ce").roi_heads.mask_predictor) is MaskRCNNPredictor


def test_frozen_backbone_stages_stay_frozen():
    """trainable_backbone_layers 3: conv1 and layer1 do not train (requires_grad off, as torchvision's
    resnet_fpn_backbone sets it; the Trainer honours it); the state-dict keys are torchvision's."""
    bb = build_fpn_backbone("resnet18", pretrained=False, fpn_channels=32, trainable_layers=3)
    frozen = {n for n, p in bb.named_parameters() if not p.requires_grad}
    assert frozen and all(n.startswith(("body.conv1", "body.bn1", "body.layer1")) for n in frozen)
    assert any(n.startswith("body.layer2") for n, p in bb.named_parameters() if p.requires_grad)
    reference = torchvision.models.detection.backbone_utils.resnet_fpn_backbone(
        backbone_name="resnet18", weights=None, trainable_layers=3, norm_layer=torch.nn.BatchNorm2d)
    assert frozen == {f"body.{n}" for n, p in reference.body.named_parameters() if not p.requires_grad}
    assert set(reference.body.state_dict()) == set(bb.body.state_dict())


def test_timm_backbone_trains_in_mask_rcnn():
    torch.manual_seed(0)
    data = SimpleNamespace(num_classes=NUM_CLASSES, class_counts=COUNTS, train=[None] * 50)
    cfg = tiny_cfg("ce")
    cfg.model.name = "resnet10t"
    model = build_detector(cfg, data)
    assert type(model.backbone).__name__ == "TimmFPN"
    model.train()
    losses = model(*batch())
    assert all(torch.isfinite(v) for v in losses.values())
    with pytest.raises(KeyError, match="unknown detection backbone"):
        build_fpn_backbone("no_such_model_xyz")


def test_unsupported_loss_is_an_error_naming_the_choices():
    with pytest.raises(KeyError, match="ce, gumbel, gumbel_drop, seesaw_det"):
        tiny_detector("focal")


def test_detection_config_reaches_the_detector():
    model = tiny_detector("gumbel_drop", nms_thresh=0.3, score_thresh=1e-4, detections_per_img=300, min_size=[48, 64])
    rh = model.roi_heads
    assert (rh.nms_thresh, rh.score_thresh, rh.detections_per_img) == (0.3, 1e-4, 300)
    assert rh.fg_bg_sampler.batch_size_per_image == 64 and rh.box_head.fc6.out_features == 64
    assert model.transform.min_size == (48, 64) and model.transform.max_size == 64
    assert model.rpn._post_nms_top_n["testing"] == KWARGS["rpn_post_nms_top_n_test"]  # model.kwargs -> MaskRCNN
