"""Frame tokens (begin/end of image, Emu3's size header, end-of-line and end-of-frame) are a third kind of
target: outside text_loss and image_loss, on the text side of the objective."""

import pytest
import torch

from orchestrator.backbones.frame import frame_positions
from orchestrator.backbones.loss import IGNORE_INDEX
from orchestrator.moss import MossConfig, apply_moss
from orchestrator.training.metrics import N_SUMS, add_loss, loss_metrics
from orchestrator.training.objective import adapter_loss
from tests.helpers import mixed_batch, randomize_adapter


def _spans(spec, batch):
    """Per image: its frame and the position of its open token."""
    for b, segments in enumerate(batch["image_layout"].segments):
        for seg in segments:
            frame = spec.image_frame(seg.height, seg.width)
            yield b, seg, frame, seg.offset - 1 - len(frame.header)


def test_frame_positions_are_exactly_each_images_frame_tokens(spec):
    batch = mixed_batch(spec)
    ids = batch["input_ids"]
    mask = frame_positions(spec.image_frame, ids, batch["image_layout"])
    want = torch.zeros_like(mask)
    for b, seg, frame, open_at in _spans(spec, batch):
        tokens = frame.tokens([-1] * (seg.height * seg.width))
        assert ids[b, open_at:open_at + len(tokens)].tolist() == [t if t >= 0 else int(ids[b, open_at + k])
                                                                   for k, t in enumerate(tokens)]
        n_frame = 1 + len(frame.header) + seg.height * len(frame.row_end) + len(frame.close)
        span = torch.arange(open_at, open_at + len(tokens))
        want[b, span[torch.tensor(tokens) >= 0]] = True
        assert int(want[b, span].sum()) == n_frame
    assert torch.equal(mask, want) and mask.any()
    cells = torch.zeros_like(mask)
    for b, seg, _, _ in _spans(spec, batch):
        cells[b, seg.positions()] = True
    assert not (mask & cells).any()


def test_text_loss_leaves_frame_tokens_out_and_the_objective_keeps_them(spec):
    batch = mixed_batch(spec)
    model = apply_moss(spec.build(seed=0), MossConfig(rank=4), spec)
    randomize_adapter(model)
    with torch.no_grad():
        out = adapter_loss(model, spec, batch)
    frame = frame_positions(spec.image_frame, batch["input_ids"], batch["image_layout"])[:, 1:]
    valid = batch["labels"][:, 1:] != IGNORE_INDEX
    assert out.n_frame == int((frame & valid).sum()) > 0
    assert out.n_targets == int(valid.sum())
    parts = [(out.text_loss, out.n_text), (out.frame_loss, out.n_frame), (out.image_loss, out.n_image)]
    total = sum(float(m) * n for m, n in parts)
    assert float(out.loss) == pytest.approx(total / out.n_targets, rel=1e-5)  # weights (1, 1): the token mean
    sums = [0.0] * N_SUMS
    add_loss(sums, out, batch)
    m = loss_metrics(sums, "val", ppl=True, image_ppl=spec.image_loss_is_ce)
    assert m["val/text_loss"] == pytest.approx(float(out.text_loss), rel=1e-6)
    assert m["val/frame_loss"] == pytest.approx(float(out.frame_loss), rel=1e-6)
    assert m["val/loss"] == pytest.approx(float(out.loss), rel=1e-5)
    assert m["val/text_ppl"] == pytest.approx(float(torch.exp(out.text_loss)), rel=1e-5)


def test_per_row_sums_are_each_rows_own_loss_and_add_up_to_the_batch(spec):
    """``per_row``: one forward, each row's sums by kind, adding up to the batch's sums and target counts."""
    batch = mixed_batch(spec)
    model = apply_moss(spec.build(seed=0), MossConfig(rank=4), spec)
    randomize_adapter(model)
    with torch.no_grad():
        whole = adapter_loss(model, spec, batch)
        out = adapter_loss(model, spec, batch, per_row=True)
    assert whole.rows is None and len(out.rows) == batch["input_ids"].shape[0] > 1
    assert float(out.loss) == pytest.approx(float(whole.loss), rel=1e-5)
    for k, (mean, n) in enumerate(((out.text_loss, out.n_text), (out.image_loss, out.n_image),
                                   (out.frame_loss, out.n_frame))):
        assert sum(r[2 * k + 1] for r in out.rows) == n
        assert sum(r[2 * k] for r in out.rows) == pytest.approx(float(mean) * n if n else 0.0, rel=1e-5)
    valid = batch["labels"][:, 1:] != IGNORE_INDEX
    for b, row in enumerate(out.rows):
        assert row[1] + row[3] + row[5] == int(valid[b].sum())
    assert any(r[3] for r in out.rows)  # some row has image targets
