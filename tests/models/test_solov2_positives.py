"""Positive slots sized to the batch: the same losses and gradients as fixed 512 slots, counts reported."""

from __future__ import annotations

import torch
from test_solov2_model import tiny_model

from solo_npu.engine.trainer import Trainer
from solo_npu.runtime import resolve_device


def _batch(instances: int = 5, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    b, h, w = 2, 128, 160
    masks = torch.zeros(b, instances, h, w, dtype=torch.uint8)
    boxes = torch.zeros(b, instances, 4)
    for i in range(b):
        for j in range(instances):
            bh, bw = int(torch.randint(16, 96, (1,), generator=g)), int(torch.randint(16, 120, (1,), generator=g))
            y, x = int(torch.randint(0, h - bh, (1,), generator=g)), int(torch.randint(0, w - bw, (1,), generator=g))
            masks[i, j, y:y + bh, x:x + bw] = 1
            boxes[i, j] = torch.tensor([x, y, x + bw, y + bh], dtype=torch.float32)
    return dict(images=torch.randn(b, 3, h, w, generator=g), gt_masks=masks, gt_boxes=boxes,
                gt_labels=torch.randint(0, 3, (b, instances), generator=g),
                gt_valid=torch.ones(b, instances, dtype=torch.bool))


def _loss_and_grads(pos_slots, max_pos=1024):
    model = tiny_model(lively=False).train()
    model.pos_slots, model.max_pos = pos_slots, max_pos
    batch = _batch()
    out = model(batch["images"], batch)
    (out["loss_cls"] + out["loss_mask"]).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out, grads


def test_sized_slots_give_the_fixed_slot_losses():
    fixed, fixed_grads = _loss_and_grads(512)
    sized, sized_grads = _loss_and_grads(None)
    assert set(sized) == {"loss_cls", "loss_mask", "dropped_positives"} and float(sized["dropped_positives"]) == 0
    assert torch.equal(sized["loss_cls"], fixed["loss_cls"]) and torch.equal(sized["loss_mask"], fixed["loss_mask"])
    assert float(sized["loss_mask"]) > 0
    for name, grad in fixed_grads.items():
        torch.testing.assert_close(sized_grads[name], grad, rtol=1e-5, atol=1e-8)


def test_positives_beyond_the_top_are_counted_and_stay_out_of_the_loss():
    model = tiny_model(lively=False).train()
    batch = _batch()
    model.max_pos = 1024
    full = int(model(batch["images"], batch)["dropped_positives"])
    assert full == 0
    model.max_pos = 4  # far fewer slots than positives
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    trainer = Trainer(model, optimizer, [], resolve_device("cpu"), max_epochs=1, iters_per_epoch=1, grad_clip=None)
    trainer.run_step(batch)
    last = trainer.last
    assert last["dropped_positives"] > 0
    # The count is reported beside the losses, never added to them.
    assert abs(last["loss"] - (last["loss_cls"] + last["loss_mask"])) < 1e-5


def test_dropped_pairs_keep_the_scale_of_the_mask_loss():
    """Kept pairs stand for the dropped ones: with every pair's dice term equal (zero mask features: every mask
    logit 0; equal-size squares), the mask loss of 4 slots equals that of all slots. Before, it shrank with the
    share of pairs dropped."""
    from solo_npu.models.solov2.losses import solov2_loss
    from solo_npu.models.solov2.targets import build_solov2_targets

    b, m, h, w = 1, 4, 128, 128
    masks = torch.zeros(b, m, h, w, dtype=torch.uint8)
    boxes = torch.zeros(b, m, 4)
    for j, (x, y) in enumerate([(4, 4), (68, 4), (4, 68), (68, 68)]):
        masks[0, j, y:y + 48, x:x + 48] = 1
        boxes[0, j] = torch.tensor([x, y, x + 48, y + 48], dtype=torch.float32)
    labels, valid = torch.tensor([[0, 1, 2, 0]]), torch.ones(b, m, dtype=torch.bool)
    grids, ranges = (12, 8), ((1, 64), (32, 256))
    cls_preds = [torch.zeros(b, 3, s, s) for s in grids]
    kernel_preds = [torch.randn(b, 8, s, s) for s in grids]
    feats = torch.zeros(b, 8, h // 4, w // 4)
    losses = {}
    for slots in (None, 4):
        t = build_solov2_targets(masks, labels, boxes, valid, grids, ranges, pos_scale=0.2, max_pos=1024,
                                 pos_slots=slots)
        losses[slots] = (solov2_loss(cls_preds, kernel_preds, feats, t)["loss_mask"], int(t.num_dropped))
    assert losses[None][1] == 0 and losses[4][1] > 4
    torch.testing.assert_close(losses[4][0], losses[None][0], rtol=1e-6, atol=0)
