"""The causal conv against F.conv2d, and the routing plan."""

from __future__ import annotations

import pytest
import torch

from orchestrator.moss import ImageLayout, ImageSegment, build_routing_plan, causal_conv2d
from orchestrator.moss.conv import reference_causal_conv2d


def _layout():
    # seq 0: a 3x4 image (stride 4) at 2, a 2x5 image with an EOL column (stride 6) at 20, truncated after 7 cells
    # seq 1: a complete 4x4 image at 5
    return ImageLayout.from_lists(
        [[ImageSegment(2, 3, 4, 4, 12), ImageSegment(20, 2, 5, 6, 7)], [ImageSegment(5, 4, 4, 4, 16)]], 40
    )


@pytest.mark.parametrize("method", ["taps", "conv2d"])
@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_causal_conv_matches_padded_conv2d_per_image(k, method):
    torch.manual_seed(k)
    layout = _layout()
    plan = build_routing_plan(layout)
    c_in, c_out = 6, 3
    rows = torch.randn(plan.num_image_positions, c_in, requires_grad=True)
    weight = torch.randn(c_out, c_in, k, k)
    out = causal_conv2d(rows, weight, plan, method=method)
    start = 0
    for segs in layout.segments:
        for seg in segs:
            n = seg.n_cells
            grid = torch.zeros(1, c_in, seg.height, seg.width)  # missing cells of a partial image are zeros
            i, j = seg.rows_cols()
            grid[0, :, i, j] = rows[start : start + n].detach().t()
            ref = reference_causal_conv2d(grid, weight)[0, :, i, j].t()
            assert torch.allclose(out[start : start + n], ref, atol=1e-5)
            start += n
    out.sum().backward()
    assert rows.grad is not None and rows.grad.abs().sum() > 0


@pytest.mark.parametrize("method", ["taps", "conv2d"])
def test_conv_output_sees_only_top_left_cells(method):
    plan = build_routing_plan(ImageLayout.from_lists([[ImageSegment(0, 4, 4, 4, 16)]], 16))
    rows = torch.randn(16, 2, requires_grad=True)
    out = causal_conv2d(rows, torch.randn(3, 2, 3, 3), plan, method=method)
    out[2 * 4 + 1].sum().backward()  # cell (2, 1)
    seen = {(int(c) // 4, int(c) % 4) for c in (rows.grad.abs().sum(1) > 0).nonzero().flatten()}
    assert seen == {(i, j) for i in range(0, 3) for j in range(0, 2)}


def test_routing_plan_partitions_positions_and_keeps_images_apart():
    layout = _layout()
    plan = build_routing_plan(layout)
    assert plan.text_pos.numel() + plan.image_pos.numel() == 2 * 40
    assert sorted(torch.cat([plan.text_pos, plan.image_pos]).tolist()) == list(range(80))
    assert plan.n_grids == 3 and (plan.max_h, plan.max_w) == (4, 5)
    # the Emu3-style image skips its EOL column: position 20 + 5 is text
    assert 25 in plan.text_pos.tolist() and 26 in plan.image_pos.tolist()
    seq_order = torch.cat([plan.text_pos, plan.image_pos])[plan.restore]
    assert torch.equal(seq_order, torch.arange(80))


def test_prompt_images_take_the_text_branch_when_image_inputs_is_off():
    layout = ImageLayout.from_lists([[ImageSegment(1, 2, 2, 2, 4, is_input=True), ImageSegment(8, 2, 2, 2, 4)]], 12)
    assert build_routing_plan(layout, image_inputs=True).image_pos.tolist() == [1, 2, 3, 4, 8, 9, 10, 11]
    assert build_routing_plan(layout, image_inputs=False).image_pos.tolist() == [8, 9, 10, 11]


def test_layout_from_positions_and_bad_segments():
    layout = ImageLayout.from_positions(20, [[(3, 2, 3)], [(10, 3, 3)]])
    assert layout.segments[1][0].n_cells == 9 and layout.segments[0][0].positions().tolist() == [3, 4, 5, 6, 7, 8]
    assert ImageLayout.from_positions(12, [[(8, 2, 3)]]).segments[0][0].n_cells == 4  # truncated by the sequence
    assert layout.image_mask().sum() == 15
    with pytest.raises(ValueError):
        ImageSegment(0, 2, 3, 2, 6)  # row stride shorter than the row
    with pytest.raises(ValueError, match="overlap"):
        build_routing_plan(ImageLayout.from_lists([[ImageSegment(0, 2, 2, 2, 4), ImageSegment(2, 2, 2, 2, 4)]], 8))
