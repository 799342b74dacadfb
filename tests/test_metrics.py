from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import write_png

from diga.data.classes import class_protocol
from diga.metrics import confusion_matrix, metrics_from_confusion


def test_confusion_and_iou_by_hand():
    gt = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 1]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 2, 1]])
    conf = confusion_matrix(pred, gt, 4)
    assert conf.tolist() == [[1, 1, 0, 0], [0, 3, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]]
    m = metrics_from_confusion(conf, ("a", "b", "c", "d"))
    assert m.iou[0] == pytest.approx(100 / 3) and m.iou[1] == pytest.approx(75)
    assert m.iou[2] == pytest.approx(50) and math.isnan(m.iou[3])  # absent everywhere: NaN
    assert m.miou == pytest.approx((100 / 3 + 75 + 50) / 3)
    assert m.pixel_acc == pytest.approx(5 / 7 * 100)
    # numpy path gives the same matrix
    assert (confusion_matrix(pred.numpy(), gt.numpy(), 4) == conf.numpy()).all()


def test_miou_agrees_with_cityscapes_evaluator(tmp_path):
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as ev

    proto = class_protocol(19)
    rng = np.random.default_rng(0)
    conf = np.zeros((19, 19), np.int64)
    gts, preds = [], []
    for i in range(4):
        gt_train = rng.integers(0, 19, (30, 50))
        gt_train[rng.random((30, 50)) < 0.1] = 255
        gt_train[gt_train == 16] = 3  # one class absent from ground truth
        pred = np.where(rng.random((30, 50)) < 0.7, gt_train, rng.integers(0, 19, (30, 50)))
        pred = np.where(pred == 255, 0, pred)
        conf += confusion_matrix(pred, gt_train, 19)
        gt_ids = np.where(gt_train == 255, 0, proto.train_to_label_id[np.minimum(gt_train, 18)])
        stem = f"frankfurt_{i:06d}_000019"
        gts.append(str(write_png(tmp_path / "gt" / f"{stem}_gtFine_labelIds.png", gt_ids.astype(np.uint8))))
        preds.append(str(write_png(tmp_path / "pred" / f"{stem}_pred.png",
                                   proto.train_to_label_id[pred].astype(np.uint8))))
    ev.args.evalInstLevelScore = False
    ev.args.JSONOutput = False
    ev.args.quiet = True
    result = ev.evaluateImgLists(preds, gts, ev.args)
    ours = metrics_from_confusion(conf, proto.names)
    assert ours.miou / 100 == pytest.approx(result["averageScoreClasses"], abs=1e-6)
    for name, iou in zip(proto.names, ours.iou, strict=True):
        theirs = result["classScores"][name]
        assert (math.isnan(iou) and math.isnan(theirs)) or iou / 100 == pytest.approx(theirs, abs=1e-6)
