"""Cached incremental decoding (KV cache + conv cache) against one full forward, and the generator."""

from __future__ import annotations

import pytest
import torch

from orchestrator.evaluation.decoding import IncrementalDecoder
from orchestrator.evaluation.generate import Generator, SamplingConfig, sample
from orchestrator.moss import TEXT, ConvCache, ImageLayout, MossConfig, Route, apply_moss
from orchestrator.moss.cache import conv_taps
from orchestrator.moss.conv import reference_causal_conv2d
from orchestrator.moss.variants import get_variant
from orchestrator.training.objective import adapter_hidden_states
from tests.helpers import ADAPTERS, BACKBONE_NAMES, VQ_BACKBONES, draw, image_embeds, randomize_adapter, spec_for

TOL = 1e-5  # max |logit difference| per unit of the largest |logit| (>= 1), float32


def off(a, ref):
    """Max |a - ref| relative to ref's scale (the presets' heads give logits of ~10: heads.py)."""
    return (a - ref).abs().max() / max(1.0, float(ref.abs().max()))


INTERLEAVED = dict(
    segments=["Draw a red square.", draw("red"), "Now a blue circle:", draw("blue", (40, 24), "circle"),
              "and a green one", draw("green", (24, 40)), "Done."],
    targets=[False, False, True, True, True, True, True])


def interleaved(spec):
    """Prompt text + prompt image, then an answer with two images of different shapes and text between."""
    ex = spec.encode(**INTERLEAVED)
    return ex["input_ids"], list(ex["image_layout"])


def model_for(spec, cfg: MossConfig):
    model = apply_moss(spec.build(seed=0), cfg, spec)
    randomize_adapter(model)
    return model.eval()


def visual_of(spec, model, segs):
    """Emu2: the (n_images, 64, d) embeddings of the interleaved example's images (None for VQ backbones)."""
    with torch.no_grad():
        visual = image_embeds(spec, model, spec.encode(**INTERLEAVED))
    return None if visual is None else visual[: len(segs)]


def image_out(spec, model, h):
    """What the image head gives: logits over codes, or Emu2's regressed embedding."""
    return spec.regress(model, h) if spec.continuous_images else spec.image_logits(model, h)


def full_logits(spec, model, ids, segs):
    batch = {"input_ids": ids[None], "image_layout": ImageLayout(((*segs,),), len(ids)),
             "image_embeds": visual_of(spec, model, segs)}
    with torch.no_grad():
        h = adapter_hidden_states(model, spec, batch)[0]
        return spec.text_logits(model, h), image_out(spec, model, h)


def cached_logits(spec, model, ids, segs, start, decoder_cls=IncrementalDecoder):
    dec = decoder_cls(model, spec)
    visual = visual_of(spec, model, segs)
    rows = {}  # position -> visual embedding of that cell (Emu2)
    if visual is not None:
        rows = {int(p): visual[k, c] for k, s in enumerate(segs) for c, p in enumerate(s.positions().tolist())}
    prompt_rows = [rows[p] for p in sorted(rows) if p < start]
    hs = [dec.prefill(ids[:start], segs, visual=torch.stack(prompt_rows) if prompt_rows else None)]
    hs += [dec.step(t, rows.get(start + i))[None] for i, t in enumerate(ids[start:].tolist())]
    h = torch.cat(hs)
    with torch.no_grad():
        return spec.text_logits(model, h), image_out(spec, model, h)


class TextOnlyDecoder(IncrementalDecoder):
    """Routes every step to the text branch: what decoding without a conv cache would compute."""

    def route(self, position):
        return TEXT


CASES = dict(ADAPTERS, **{"moss-full-no-image-inputs": MossConfig(rank=4, alpha=8, image_inputs=False),
                          # an image branch of its own rank (adapter.image_rank / match_params): the caches follow it
                          "moss-full-image-rank-3": MossConfig(rank=4, alpha=8, image_rank=3),
                          "moss-lowrank-image-rank-6": MossConfig(rank=4, alpha=8, image_rank=6, conv_space="lowrank")})


@pytest.mark.parametrize("label", list(CASES))
@pytest.mark.parametrize("name", BACKBONE_NAMES)
def test_cached_logits_equal_a_full_forward(name, label):
    """Prefill ends inside the prompt image, just before the first answer image, and inside the second."""
    spec = spec_for(name)
    model = model_for(spec, CASES[label])
    ids, segs = interleaved(spec)
    assert len(segs) == 3 and segs[1].height != segs[2].height or name != "emu3"
    ref_text, ref_img = full_logits(spec, model, ids, segs)
    for start in (segs[0].offset + 5, segs[1].offset - 1, segs[2].offset + segs[2].row_stride + 2):
        text, img = cached_logits(spec, model, ids, segs, start)
        assert off(text, ref_text) <= TOL, (start, off(text, ref_text))
        assert off(img, ref_img) <= TOL, (start, off(img, ref_img))
    if not get_variant(CASES[label].variant).shared_branch:  # the check has teeth: without the image branch the logits move
        text, _ = cached_logits(spec, model, ids, segs, segs[1].offset - 1, TextOnlyDecoder)
        answer_cells = torch.cat([s.positions() for s in segs[1:]])
        assert off(text[answer_cells], ref_text[answer_cells]) > 100 * TOL


@pytest.mark.parametrize("name", BACKBONE_NAMES)
def test_a_prompt_cut_inside_an_image_keeps_decoding_it(name):
    """Layout derived from the cut prompt itself (the image looks truncated): its cells still take the conv."""
    spec = spec_for(name)
    model = model_for(spec, ADAPTERS["moss-full"])
    ids, segs = interleaved(spec)
    start = segs[1].offset + segs[1].row_stride + 1
    ref_text, _ = full_logits(spec, model, ids[: segs[1].positions()[-1] + 1], segs[:2])
    prompt_layout = list(spec.image_layout(ids[None, :start]).segments[0])
    assert prompt_layout[-1].n_cells < prompt_layout[-1].height * prompt_layout[-1].width
    dec = IncrementalDecoder(model, spec)
    visual = visual_of(spec, model, segs)
    rows = None if visual is None else visual.flatten(0, 1)  # cells of both images, in order
    n_prompt = sum(s.n_cells for s in prompt_layout)
    h = torch.cat([dec.prefill(ids[:start], prompt_layout, visual=None if rows is None else rows[:n_prompt])]
                  + [dec.step(t, None if rows is None else rows[n_prompt + i])[None]
                     for i, t in enumerate(ids[start : segs[1].positions()[-1] + 1].tolist())])
    with torch.no_grad():
        assert off(spec.text_logits(model, h), ref_text) <= TOL


def test_a_prompt_longer_than_the_context_is_refused():
    spec = spec_for("chameleon")
    gen = Generator(model_for(spec, ADAPTERS["moss-full"]), spec, max_length=40)
    with pytest.raises(ValueError, match="exceeds the model's 40 positions"):
        gen.generate(["x" * 20, draw("red")], SamplingConfig())
    with pytest.raises(ValueError, match="8x8 image"):
        gen.generate(["hi"], SamplingConfig(open_image=True))
    answer = gen.generate(["hi"], SamplingConfig(max_new_tokens=100, temperature=0))
    assert len(answer.ids) <= 40 and answer.stop in ("eos", "max_length")


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_conv_cache_is_the_causal_conv(k):
    """Two rows decode images of different widths at once, a third decodes text, rows leave and join."""
    torch.manual_seed(k)
    c_in, c_out = 6, 3
    grids = [torch.randn(1, c_in, 5, 7), torch.randn(1, c_in, 4, 3)]
    weight = torch.randn(c_out, c_in, k, k)
    refs = [reference_causal_conv2d(g, weight)[0] for g in grids]
    taps = conv_taps(weight)
    cache = ConvCache(k)
    for _ in range(3):
        cache.add_row()

    def step(routes, xs):
        return cache.conv("layer", torch.stack(xs), taps, cache.plan(routes, "cpu"))

    cells = [[(i, j) for i in range(g.shape[2]) for j in range(g.shape[3])] for g in grids]
    for n, (a, b) in enumerate(zip(cells[0], cells[1] + [None] * len(cells[0]))):
        routes = [Route("A", 7, a), TEXT, Route("B", 3, b) if b else TEXT]
        xs = [grids[0][0, :, a[0], a[1]]] + ([grids[1][0, :, b[0], b[1]]] if b else [])
        out = step(routes, xs)
        assert torch.allclose(out[0], refs[0][:, a[0], a[1]], atol=1e-5), (a, n)
        if b:
            assert torch.allclose(out[1], refs[1][:, b[0], b[1]], atol=1e-5), b
        if n == 5:  # the text row leaves, a new row joins, a step of text: regions move, their content stays
            cache.keep([0, 2])
            cache.add_row()
            cache.plan([TEXT, TEXT, TEXT], "cpu")
            cache.keep([0, 1])
            break
    for a, b in zip(cells[0][6:], cells[1][6:] + [None] * 40):
        routes = [Route("A", 7, a), Route("B", 3, b) if b else TEXT]
        xs = [grids[0][0, :, a[0], a[1]]] + ([grids[1][0, :, b[0], b[1]]] if b else [])
        out = step(routes, xs)
        assert torch.allclose(out[0], refs[0][:, a[0], a[1]], atol=1e-5), a
        if b:
            assert torch.allclose(out[1], refs[1][:, b[0], b[1]], atol=1e-5), b
    out = step([Route("A2", 7, (0, 0)), TEXT], [grids[0][0, :, 0, 0]])  # a new image starts from zero padding
    assert torch.allclose(out[0], refs[0][:, 0, 0], atol=1e-5)


def test_a_step_takes_one_token_of_one_sequence():
    spec = spec_for("chameleon")
    model = model_for(spec, ADAPTERS["moss-full"])
    ids, segs = interleaved(spec)
    dec = IncrementalDecoder(model, spec)
    dec.prefill(ids[:10], segs)
    from orchestrator.moss import routed_step

    with routed_step(model, [TEXT]), pytest.raises(RuntimeError, match="one token of each of its 1 sequence"):
        spec.forward_hidden(model, ids[None, 10:12], dec.cache)
    with pytest.raises(RuntimeError, match="reset"):
        dec.prefill(ids[:5])


@pytest.mark.parametrize("name", VQ_BACKBONES)  # emu2's regressed images: tests/unit/backbones/test_emu2.py
def test_generated_images_follow_the_grid_and_the_sampled_logits_are_exact(name):
    spec = spec_for(name)
    model = model_for(spec, ADAPTERS["moss-lowrank"])
    size = (3, 5) if name == "emu3" else None
    cfg = SamplingConfig(max_new_tokens=6, open_image=True, max_images=1, image_size=size, seed=3)
    answer = Generator(model, spec).generate(["Edit this:", draw("red"), "make it blue"], cfg, record_logits=True)
    h, w = spec.generation_grid(size)
    frame = spec.image_frame(h, w)
    image = answer.images[0]
    assert image.codes.shape == (h, w) and answer.parts[0] is image
    gen = answer.ids[answer.prompt_length:]
    n_image = len(frame.tokens([0] * h * w))
    assert gen[: 1 + len(frame.header)] == [frame.open_id, *frame.header]
    assert gen[n_image - len(frame.close) : n_image] == list(frame.close)
    cells = gen[1 + len(frame.header) : n_image - len(frame.close)]
    codes = [t for i, t in enumerate(cells) if i % frame.row_stride < w]
    assert len(codes) == h * w and torch.isin(torch.tensor(codes), spec.image_candidates).all()
    if name == "emu3":  # EOL after every row
        assert [cells[i * frame.row_stride + w] for i in range(h)] == list(frame.row_end) * h
    layout = spec.image_layout(torch.tensor([answer.ids]))
    assert layout.segments[0][-1].n_cells == h * w and layout.segments[0][-1].height == h
    assert (image.image is None) == (name == "chameleon")
    if image.image is not None:
        assert image.image.size[0] > w and image.image.mode == "RGB"
    # every chosen token's logits are those a full forward gives at its position
    ids = torch.tensor(answer.ids)
    labels = torch.tensor([-100] * answer.prompt_length + gen)
    segs = list(spec.image_layout(ids[None], labels[None]).segments[0])
    ref_text, ref_img = full_logits(spec, model, ids, segs)
    n_text = len(gen) - n_image
    assert len(answer.step_logits) == 1 + h * w + n_text
    for pos, logits in answer.step_logits:
        ref = ref_img[pos - 1] if logits.shape[-1] == ref_img.shape[-1] else ref_text[pos - 1]
        assert off(logits, ref) <= TOL, pos


def test_text_sampling_avoids_frame_tokens_and_is_seeded():
    spec = spec_for("emu3")
    model = model_for(spec, ADAPTERS["moss-full"])
    gen = Generator(model, spec)
    cfg = SamplingConfig(max_new_tokens=40, temperature=5.0, top_p=1.0, max_images=0, seed=1)
    a, b = gen.generate(["Say something:"], cfg), gen.generate(["Say something:"], cfg)
    assert a.ids == b.ids and a.stop in ("eos", "max_new_tokens") and not a.images
    new = set(a.ids[a.prompt_length:]) - {spec.tokenizer.eos_token_id}
    assert new and not new & set(spec.text_banned_ids()) and spec.token_id(spec.image_start) not in new
    c = gen.generate(["Say something:"], SamplingConfig(max_new_tokens=40, temperature=5.0, top_p=1.0, max_images=0,
                                                        seed=2))
    assert c.ids != a.ids


def test_sample_greedy_and_nucleus():
    g = torch.Generator().manual_seed(0)
    logits = torch.tensor([0.0, 3.0, 2.9, -1.0])
    assert sample(logits, 0.0, 1.0, g) == 1
    assert {sample(logits, 1.0, 0.3, g) for _ in range(50)} == {1}  # top 30% of the mass is token 1 alone
    assert {sample(logits, 1.0, 0.9, g) for _ in range(200)} == {1, 2}
    with pytest.raises(ValueError):
        SamplingConfig(top_p=0)
