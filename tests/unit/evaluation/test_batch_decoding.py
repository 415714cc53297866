"""Batched cached decoding: every sequence of a batch gets what decoding it alone gives.

Three teacher-forced sequences share one BatchDecoder: they join at different times (so sit at different
positions, left-padded), decode images of different grid sizes while others are in text, and leave when
they end (so rows drop out and pad columns are trimmed). Each one's logits (Emu2: regressed embeddings)
must equal batch-1 decoding of the same tokens within 1e-5 relative, for every backbone and adapter form.
"""

from __future__ import annotations

import pytest
import torch

from orchestrator.evaluation.decoding import BatchDecoder, IncrementalDecoder
from orchestrator.evaluation.generate import Generator, SamplingConfig
from orchestrator.moss import unwrap
from tests.helpers import BACKBONE_NAMES, draw, image_embeds, spec_for
from tests.unit.evaluation.test_decoding import CASES, TOL, image_out, model_for, off

EXAMPLES = [  # (segments, targets), prompt cut before the first answer image
    (["Draw a red square.", draw("red"), "Now a blue circle:", draw("blue", (40, 24), "circle"), "and a green one",
      draw("green", (24, 40)), "Done."], [False, False, True, True, True, True, True]),
    (["Hi.", draw("blue", (24, 24)), "ok"], [False, True, True]),
    (["Some words first, then a picture", draw("yellow", (32, 40)), "and the end of it all, in words."],
     [False, True, True]),
]
JOIN_AT = (0, 4, 9)  # global step at which each sequence joins


def example(spec, model, segments, targets):
    ex = spec.encode(segments, targets=targets)
    ids, segs = ex["input_ids"], list(ex["image_layout"])
    image_targets = [t for s, t in zip(segments, targets) if not isinstance(s, str)]
    start = next(s.offset - 1 for s, t in zip(segs, image_targets) if t)  # just before the first answer image
    rows = {}  # position -> visual embedding of that cell (Emu2)
    with torch.no_grad():
        visual = image_embeds(spec, model, ex)
    if visual is not None:
        rows = {int(p): visual[k, c] for k, s in enumerate(segs) for c, p in enumerate(s.positions().tolist())}
    return ids, segs, start, rows


def batched_hidden(spec, model, examples) -> list[torch.Tensor]:
    """Decode the examples together (joins at JOIN_AT, rows leave when done); -> per example its hidden
    states at positions start-1.. (the prefill's last, then each step's)."""
    dec = BatchDecoder(model, spec)
    out = [[] for _ in examples]
    live: list[int] = []  # example index per decoder row
    pos = {}
    for t in range(1000):
        for e, at in enumerate(JOIN_AT):
            if at == t:
                ids, segs, start, rows = examples[e]
                closed = [s for s in segs if s.positions()[-1] < start]
                prompt_rows = [rows[p] for p in sorted(rows) if p < start]
                h = dec.join(ids[:start], closed, visual=torch.stack(prompt_rows) if prompt_rows else None)
                out[e].append(h[-1])
                for s in segs[len(closed):]:
                    dec.add_segment(len(live), s)
                live.append(e)
                pos[e] = start
        if not live:
            break
        tokens = [int(examples[e][0][pos[e]]) for e in live]
        visual = [examples[e][3].get(pos[e]) for e in live]
        h = dec.step(tokens, visual)
        for b, e in enumerate(live):
            out[e].append(h[b])
            pos[e] += 1
        done = [b for b, e in enumerate(live) if pos[e] == len(examples[e][0])]
        if done:
            dec.drop(done)
            live = [e for b, e in enumerate(live) if b not in done]
    assert dec.rows == [] and dec.cache is None
    return [torch.stack(h) for h in out]


def alone(spec, model, ex) -> torch.Tensor:
    """Batch-1 decoding of one example (IncrementalDecoder, itself equal to a full forward: test_decoding.py)."""
    ids, segs, start, rows = ex
    dec = IncrementalDecoder(model, spec)
    prompt_rows = [rows[p] for p in sorted(rows) if p < start]
    h = [dec.prefill(ids[:start], segs, visual=torch.stack(prompt_rows) if prompt_rows else None)[-1]]
    h += [dec.step(t, rows.get(start + i)) for i, t in enumerate(ids[start:].tolist())]
    return torch.stack(h)


@pytest.mark.parametrize("label", list(CASES))
@pytest.mark.parametrize("name", BACKBONE_NAMES)
def test_each_sequence_of_a_batch_decodes_as_if_alone(name, label):
    spec = spec_for(name)
    model = model_for(spec, CASES[label])
    examples = [example(spec, model, *ex) for ex in EXAMPLES]
    if name == "emu3":  # grids of different sizes are decoded side by side
        assert len({(s.height, s.width) for ex in examples for s in ex[1]}) >= 3
    hidden = batched_hidden(spec, model, examples)
    for ex, h in zip(examples, hidden):
        ref = alone(spec, model, ex)
        with torch.no_grad():
            for head in (spec.text_logits, lambda m, x: image_out(spec, m, x)):
                assert off(head(model, h), head(model, ref)) <= TOL, off(head(model, h), head(model, ref))


PROMPTS = [  # text answers, answers that open an image, answers that may draw one: rows at every stage
    (["Say something:"], dict(max_new_tokens=9, max_images=0)),
    (["Edit this:", draw("red"), "make it blue"], dict(max_new_tokens=3, open_image=True, max_images=1)),
    (["Draw:"], dict(max_new_tokens=0, open_image=True, max_images=1, image_size=(3, 5))),
    (["Tell me, then draw"], dict(max_new_tokens=12, max_images=2, temperature=3.0)),
    (["Another one:", draw("green", (24, 40))], dict(max_new_tokens=5, open_image=True, max_images=1,
                                                      image_size=(4, 2))),
]


@pytest.mark.parametrize("name", BACKBONE_NAMES)
def test_batched_generation_gives_each_prompt_its_own_answer(name):
    """generate_many at batch 3 (refilled as answers finish) == one prompt at a time, per-record seeds."""
    spec = spec_for(name)
    model = model_for(spec, CASES["moss-lowrank"])
    gen = Generator(model, spec)
    prompts = []
    for i, (segments, kw) in enumerate(PROMPTS):
        if kw.get("image_size") and name != "emu3":
            kw = {k: v for k, v in kw.items() if k != "image_size"}
        prompts.append((segments, SamplingConfig(seed=10 + i, **kw)))
    alone = [gen.generate(s, c, record_logits=True, decode=False) for s, c in prompts]
    together = dict(gen.generate_many(prompts, batch_size=3, record_logits=True, decode=False))
    assert sorted(together) == list(range(len(prompts)))
    for a, (i, b) in zip(alone, sorted(together.items())):
        assert not isinstance(b, Exception), b
        assert b.ids == a.ids and b.stop == a.stop, i
        assert [p.size for p in b.images] == [p.size for p in a.images]
        for x, y in zip(a.images, b.images):
            assert off(y.grid.float(), x.grid.float()) <= TOL
        for (p, x), (q, y) in zip(a.step_logits, b.step_logits):
            assert p == q and off(y, x) <= TOL
    assert any(a.images for a in alone) and any(not a.images for a in alone)


def test_a_failing_prompt_is_returned_not_raised_and_the_batch_goes_on():
    spec = spec_for("chameleon")
    gen = Generator(model_for(spec, CASES["moss-full"]), spec, max_length=40)
    ok = SamplingConfig(max_new_tokens=4, max_images=0, seed=1)
    prompts = [(["hi"], ok), (["x" * 30, draw("red")], ok), (["hello"], ok)]
    results = dict(gen.generate_many(prompts, batch_size=2))
    assert isinstance(results[1], ValueError) and "exceeds the model's 40 positions" in str(results[1])
    assert results[0].ids == gen.generate(["hi"], ok).ids and results[2].ids == gen.generate(["hello"], ok).ids
    with pytest.raises(ValueError, match="batch_size"):
        list(gen.generate_many(prompts, batch_size=0))


def test_a_failing_batched_step_sends_its_answers_back_one_at_a_time():
    """A fault in a batched forward (here: raised by the first decoder layer whenever a step has more than one
    sequence, as an out-of-memory error would be) costs no answer: each is decoded again alone, the batch is
    halved for the rest, and a fault at batch 1 is that answer's failure only."""
    spec = spec_for("emu3")
    model = model_for(spec, CASES["moss-full"])
    gen = Generator(model, spec)
    prompts = [(s, SamplingConfig(seed=10 + i, **kw)) for i, (s, kw) in enumerate(PROMPTS)]
    alone = [gen.generate(s, c, decode=False) for s, c in prompts]
    layer = next(m for n, m in model.named_modules() if n.endswith("layers.0"))
    seen = []

    def fault_in(batched_only):
        def hook(module, args, kwargs):
            x = args[0] if args else kwargs["hidden_states"]
            seen.append(x.shape[0])
            if x.shape[1] == 1 and (x.shape[0] > 1 or not batched_only):  # a step (not a prefill)
                raise RuntimeError("CUDA out of memory (injected)")
        return layer.register_forward_pre_hook(hook, with_kwargs=True)

    hook = fault_in(batched_only=True)
    try:
        together = list(gen.generate_many(prompts, batch_size=4, decode=False))
    finally:
        hook.remove()
    assert max(seen) == 4 and gen.retried >= 4 and gen.batch_limit < 4  # the batch ran, failed, was halved
    assert sorted(i for i, _ in together) == list(range(len(prompts)))  # each answer once
    assert [a.ids for _, a in sorted(together, key=lambda x: x[0])] == [a.ids for a in alone]
    hook = fault_in(batched_only=False)
    try:
        failed = list(gen.generate_many(prompts[:3], batch_size=2, decode=False))
    finally:
        hook.remove()
    assert sorted(i for i, _ in failed) == [0, 1, 2] and all(isinstance(r, RuntimeError) for _, r in failed)
    assert gen.retried == 2  # the first batch of two went back; alone, each failed
    assert gen.generate(*prompts[0], decode=False).ids == alone[0].ids  # nothing left behind in the caches


def test_an_answer_done_in_the_head_phase_of_a_failing_step_is_kept():
    """Janus: row 0's text head ends its answer (max_new_tokens), then row 1's image head fails once (as an
    out-of-memory error would): row 0's answer is yielded, row 1 is decoded again alone."""
    spec = spec_for("janus")
    model = model_for(spec, CASES["moss-full"])
    gen = Generator(model, spec)
    prompts = [(["Say:"], SamplingConfig(seed=1, max_new_tokens=3, max_images=0, temperature=0.5)),
               (["Draw:"], SamplingConfig(seed=2, max_new_tokens=0, open_image=True, max_images=1))]
    alone = [gen.generate(s, c, decode=False) for s, c in prompts]
    assert alone[0].stop == "max_new_tokens" and alone[1].images
    calls = []

    def fault(module, args):
        calls.append(args[0].shape[0])
        if len(calls) == 3:  # the image head of the step whose text head ends row 0 (row 1's third cell)
            raise RuntimeError("CUDA out of memory (injected)")

    hook = unwrap(model).model.generation_head.register_forward_pre_hook(fault)
    try:
        together = list(gen.generate_many(prompts, batch_size=2, decode=False))
    finally:
        hook.remove()
    assert len(calls) > 3 and gen.retried == 1  # only row 1 went back
    assert sorted(i for i, _ in together) == [0, 1]
    assert [a.ids for _, a in sorted(together, key=lambda x: x[0])] == [a.ids for a in alone]
