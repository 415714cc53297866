"""Emu2: [IMG] + 64 <image> + [/IMG], Emu2's encode_image pooling, the regression loss, pixels in shards,
and 64 embeddings regressed one by one through the KV + conv caches."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from orchestrator.backbones import backbone_from_config, get_backbone
from orchestrator.config import ConfigError, FilterSection, load_config
from orchestrator.data.shards import example_from_row
from orchestrator.data.sources import Chunk
from orchestrator.data.tokenize import Tokenize
from orchestrator.data.validate import validate_record
from orchestrator.evaluation.generate import Generator, SamplingConfig
from orchestrator.moss import apply_moss
from orchestrator.training.metrics import loss_metrics
from orchestrator.training.objective import adapter_hidden_states, adapter_loss
from tests.helpers import ADAPTERS, draw, image_embeds, mixed_batch, randomize_adapter, spec_for

spec = spec_for("emu2")


def ids_of(*tokens: str) -> list[int]:
    return [spec.token_id(t) for t in tokens]


def adapted(label: str = "moss-full"):
    model = apply_moss(spec.build(seed=0), ADAPTERS[label], spec)
    randomize_adapter(model)
    return model.eval()


def test_an_image_is_img_64_placeholders_img_end():
    ex = spec.encode(["Look:", draw("red", (40, 24))], targets=[False, True])
    ids, (seg,) = ex["input_ids"].tolist(), ex["image_layout"]
    img, image, end = ids_of("[IMG]", "<image>", "[/IMG]")
    assert ids[seg.offset - 1] == img and ids[seg.offset : seg.offset + 64] == [image] * 64 and ids[seg.offset + 64] == end
    assert (seg.height, seg.width, seg.row_stride, seg.n_cells, seg.is_input) == (8, 8, 8, 64, False)
    assert [im.size for im in ex["images"]] == [(32, 32)]  # resized to the visual encoder's input


def test_text_never_yields_image_placeholders():
    ids = spec.encode(["a literal <image> and [IMG] in text"])["input_ids"]
    assert not set(ids.tolist()) & set(ids_of("[IMG]", "<image>", "[/IMG]"))
    assert len(spec.image_layout(ids[None]).segments[0]) == 0


def test_visual_embeddings_average_pool_the_patch_grid_row_major():
    model = spec.build(seed=0)
    px = spec.collate([spec.encode([draw("red"), draw("blue", shape="circle")])])["pixel_values"]
    with torch.no_grad():
        patches = model.model.visual(px).last_hidden_state[:, 1:]  # (2, 16 * 16, 32), CLS dropped
        manual = patches.reshape(2, 8, 2, 8, 2, 32).mean((2, 4)).reshape(2, 64, 32)  # 2 x 2 cells, row-major
        assert torch.allclose(spec.visual_embeddings(model, px), manual, atol=1e-6)


def test_placeholders_carry_the_projected_embeddings():
    model, batch = spec.build(seed=0), mixed_batch(spec)
    with torch.no_grad():
        visual = spec.batch_visual(model, batch)  # 3 images: 2 in sequence 0, 1 in sequence 1
        emb = spec.embed(model, batch["input_ids"], batch["image_layout"], visual)
        tokens = model.get_input_embeddings()(batch["input_ids"])
        layout = batch["image_layout"].segments
        assert torch.allclose(emb[0, layout[0][1].positions()], model.project_up(visual[1]))
        assert torch.allclose(emb[1, layout[1][0].positions()], model.project_up(visual[2]))
        cells = torch.zeros_like(batch["input_ids"], dtype=torch.bool)
        for b, segs in enumerate(layout):
            for s in segs:
                cells[b, s.positions()] = True
        assert torch.equal(emb[~cells], tokens[~cells])
    with pytest.raises(ValueError, match="lays out 3 images but has visual embeddings for 2"):
        spec.embed(model, batch["input_ids"], batch["image_layout"], visual[:2])


@pytest.mark.parametrize("regression", ["mse", "cosine"])
def test_loss_is_text_ce_plus_next_embedding_regression(regression):
    """By hand: [IMG] and each <image> but the last predict the next embedding; every other target is CE."""
    s = get_backbone("emu2", regression=regression)
    model, batch = adapted(), mixed_batch(s)
    out = adapter_loss(model, s, batch, weights=(0.5, 2.0))
    with torch.no_grad():
        h, visual = adapter_hidden_states(model, s, batch), s.batch_visual(model, batch)
    labels, k = batch["labels"], 0
    img_sum, n_img, cell_pos = 0.0, 0, set()
    for b, segs in enumerate(batch["image_layout"].segments):
        for seg in segs:
            pos = seg.positions()
            cell_pos.update((b, int(p)) for p in pos)
            if not seg.is_input:
                pred, target = model.project_down(h[b, pos - 1]), visual[k]
                per = (pred - target).pow(2).mean(-1) if regression == "mse" else 1 - F.cosine_similarity(pred, target, dim=-1)
                img_sum, n_img = img_sum + float(per.sum()), n_img + len(pos)
            k += 1
    text = [(b, t) for b in range(labels.shape[0]) for t in range(1, labels.shape[1])
            if labels[b, t] != -100 and (b, t) not in cell_pos]
    logits = torch.stack([model.base_model.model.model.decoder.lm.lm_head(h[b, t - 1]) for b, t in text])
    ce = F.cross_entropy(logits, torch.tensor([int(labels[b, t]) for b, t in text]), reduction="none")
    # [IMG] and [/IMG] of the target images frame them: their CE is frame_loss, not text_loss
    is_frame = torch.tensor([int(labels[b, t]) in (s.token_id(s.img), s.token_id(s.img_end)) for b, t in text])
    text_sum, frame_sum = float(ce[~is_frame].sum()), float(ce[is_frame].sum())
    n_frame = int(is_frame.sum())
    assert (out.n_image, out.n_text, out.n_frame) == (n_img, len(text) - n_frame, n_frame)
    assert n_img == 2 * 64 and n_frame == 2 * 2  # the prompt image is not a target
    assert float(out.image_loss) == pytest.approx(img_sum / n_img, rel=1e-5)
    assert float(out.text_loss) == pytest.approx(text_sum / (len(text) - n_frame), rel=1e-5)
    assert float(out.frame_loss) == pytest.approx(frame_sum / n_frame, rel=1e-5)
    assert float(out.loss.detach()) == pytest.approx((0.5 * (text_sum + frame_sum) + 2.0 * img_sum) / (n_img + len(text)),
                                                     rel=1e-5)


def test_regression_metrics_have_no_image_perplexity():
    m = loss_metrics([12.0, 4, 3.0, 6, 10], "val", ppl=True, image_ppl=spec.image_loss_is_ce)
    assert m["val/image_loss"] == 0.5 and "val/text_ppl" in m and "val/image_ppl" not in m and "val/ppl" not in m


def test_a_few_steps_lower_the_image_regression_loss():
    model = apply_moss(spec.build(seed=0), ADAPTERS["moss-full"], spec)
    batch = mixed_batch(spec)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(8):
        out = adapter_loss(model, spec, batch, weights=(0.0, 1.0))
        losses.append(float(out.image_loss))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    assert losses[-1] < 0.5 * losses[0], losses


def test_generation_regresses_the_64_embeddings_through_the_caches():
    """Each generated embedding is project_down of the full forward's hidden state one position earlier,
    with the embeddings generated so far in place: the KV + conv caches change nothing."""
    model = adapted("moss-lowrank")
    prompt = ["Edit this:", draw("red"), "make it blue"]
    cfg = SamplingConfig(max_new_tokens=4, open_image=True, max_images=1, seed=3)
    answer = Generator(model, spec).generate(prompt, cfg)
    image = answer.images[0]
    assert image.codes is None and image.image is None and image.embeddings.shape == (8, 8, 32)
    assert answer.ids[answer.prompt_length : answer.prompt_length + 66] == ids_of("[IMG]") + ids_of("<image>") * 64 + ids_of("[/IMG]")
    ids = torch.tensor(answer.ids)
    layout = spec.image_layout(ids[None])
    with torch.no_grad():
        prompt_visual = image_embeds(spec, model, spec.encode(prompt))
        embeds = torch.cat([prompt_visual, image.embeddings.reshape(1, 64, 32)])
        h = adapter_hidden_states(model, spec, {"input_ids": ids[None], "image_layout": layout, "image_embeds": embeds})[0]
        expected = spec.regress(model, h[layout.segments[0][1].positions() - 1])
    assert (expected - image.embeddings.reshape(64, 32)).abs().max() <= 1e-5
    assert not torch.allclose(image.embeddings[0, 0], image.embeddings[7, 7])


def test_generated_grid_is_saved_as_npy(tmp_path):
    answer = Generator(adapted(), spec).generate(["Draw:"], SamplingConfig(max_new_tokens=0, open_image=True, max_images=1))
    files = answer.images[0].save(tmp_path, "image_0")
    assert files == {"embeddings": "image_0.embeddings.npy"}
    assert np.load(tmp_path / files["embeddings"]).shape == (8, 8, 32)


def png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def test_shards_hold_the_resized_pixels_losslessly(tmp_path):
    """Tokenize (the Ray Data stage) stores one PNG per image; training decodes exactly what encode gives."""
    for name, color, size in (("a", "red", (64, 48)), ("b", "blue", (30, 50))):
        (tmp_path / f"{name}.png").write_bytes(png(draw(color, size)))
    raw = {"id": "r", "instruction": "Do it.", "input": [{"type": "image", "image": "a.png"}],
           "output": [{"type": "text", "text": "done"}, {"type": "image", "image": "b.png"}]}
    row = validate_record(raw, Chunk(str(tmp_path / "d.jsonl"), 0, "lines"), 1, FilterSection(), {}, 0.0)
    shard_row = Tokenize("emu2", "tiny", max_seq_len=2048).row(row)
    assert shard_row["stage"] == "" and len(shard_row["pixels"]) == shard_row["n_images"] == 2
    assert all(Image.open(io.BytesIO(b)).size == (32, 32) for b in shard_row["pixels"])
    direct = spec.encode(["Do it.", draw("red", (64, 48)), "done", draw("blue", (30, 50))], [False, False, True, True])
    from_shard = spec.collate([example_from_row(shard_row)])
    assert from_shard["input_ids"][0].tolist() == direct["input_ids"].tolist()
    assert torch.equal(from_shard["pixel_values"], spec.collate([direct])["pixel_values"])


def test_collate_refuses_images_missing_behind_the_layout():
    ex = spec.encode(["x", draw("red")])
    with pytest.raises(ValueError, match="1 images in the token layout but 0 pixel images"):
        spec.collate([{**ex, "images": []}])


def test_regression_option_is_emu2_only():
    cfg = load_config(None, ["backbone.name=emu2", "backbone.image_regression=cosine"])
    assert backbone_from_config(cfg).regression == "cosine"
    assert backbone_from_config(load_config(None, ["backbone.name=emu2"])).regression == "mse"
    with pytest.raises(ConfigError, match="emu2"):
        load_config(None, ["backbone.name=chameleon", "backbone.image_regression=cosine"])


@pytest.fixture(scope="module")
def emu2_gen(tmp_path_factory):
    """A tiny folder laid out like BAAI/Emu2-Gen: the stand-in as multimodal_encoder/, its tokenizer, and a
    random SDXL-shaped UNet (text_time conditioning on 32-d embeddings, bf16-variant file names), VAE and
    Emu2-Gen's Euler scheduler."""
    import json

    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel

    root = tmp_path_factory.mktemp("emu2-gen")
    spec.build(seed=0).save_pretrained(root / "multimodal_encoder")
    spec.tokenizer.save_pretrained(root / "tokenizer")
    torch.manual_seed(0)
    UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=4, addition_embed_type="text_time", addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=32 + 6 * 8, norm_num_groups=32,
    ).save_pretrained(root / "unet", variant="bf16")
    AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(32, 64), latent_channels=4,
                  norm_num_groups=32, sample_size=16).save_pretrained(root / "vae")
    EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", timestep_spacing="leading",
                           steps_offset=1).save_pretrained(root / "scheduler")
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor

    tower = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    checker = StableDiffusionSafetyChecker(CLIPConfig(vision_config=dict(tower, image_size=32, patch_size=8),
                                                      text_config=dict(tower, vocab_size=99), projection_dim=16))
    with torch.no_grad():  # thresholds no random image reaches (a test lowers them to see the checker act)
        checker.concept_embeds_weights.fill_(10.0)
        checker.special_care_embeds_weights.fill_(10.0)
    checker.save_pretrained(root / "safety_checker")
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        root / "feature_extractor")
    (root / "model_index.json").write_text(json.dumps({
        "_class_name": "EmuVisualGenerationPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"], "scheduler": ["diffusers", "EulerDiscreteScheduler"]}))
    return root


def test_an_emu2_gen_checkpoint_decodes_regressed_embeddings_to_pixels(emu2_gen):
    gen_spec = get_backbone("emu2", checkpoint=str(emu2_gen))
    model = gen_spec.build()
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), spec.build(seed=0).state_dict().values()))
    assert gen_spec.has_pixel_decoder and gen_spec.tokenizer.get_vocab() == spec.tokenizer.get_vocab()
    cfg = SamplingConfig(max_new_tokens=0, open_image=True, max_images=1, diffusion_steps=3, diffusion_size=16)
    generator = Generator(model, gen_spec)
    image = generator.generate(["Draw a red square:"], cfg).images[0]
    assert image.embeddings.shape == (8, 8, 32) and image.image.size == (16, 16) and image.image.mode == "RGB"
    negative = generator.negative_embeddings()  # regressed after an empty prompt: the guidance's other half
    assert negative.shape == (8, 8, 32) and not torch.allclose(negative, image.embeddings)
    decode = lambda grid, seed=0: np.asarray(gen_spec.decode_image(grid, model, negative, cfg.with_(seed=seed).diffusion()))  # noqa: E731
    first = decode(image.embeddings)
    assert np.array_equal(first, np.asarray(image.image)) and np.array_equal(first, decode(image.embeddings))
    assert not np.array_equal(first, decode(torch.zeros_like(image.embeddings)))  # the embeddings condition the UNet
    assert not np.array_equal(first, decode(image.embeddings, seed=1))  # and the seed draws the noise
    checker = gen_spec.diffusion(model).safety_checker
    with torch.no_grad():  # Emu2-Gen's safety checker runs on every image: a flagged one comes back black
        checker.concept_embeds_weights.fill_(-10.0)
    assert first.any() and not decode(image.embeddings).any()
    assert not spec.has_pixel_decoder and "Emu2-Gen" in spec.pixel_note


def test_image_tokens_in_text_are_refused_or_rejected(tmp_path, monkeypatch):
    """A real tokenizer might keep "[IMG]" whole (an added, non-special token): text_ids refuses it, and a
    record whose placeholders still outnumber its images is a tokenize reject, never a crash in training."""
    raw = {"id": "r", "output": [{"type": "text", "text": "an [IMG] in the text"}]}
    row = validate_record(raw, Chunk(str(tmp_path / "d.jsonl"), 0, "lines"), 1, FilterSection(), {}, 0.0)
    tok = Tokenize("emu2", "tiny", max_seq_len=2048)
    assert tok.row(row)["stage"] == ""  # the tiny tokenizer splits its special tokens into plain bytes
    cls = type(tok.spec.tokenizer)
    call = cls.__call__
    monkeypatch.setattr(cls, "__call__", lambda self, text, split_special_tokens=False, **kw: call(self, text, **kw))
    with pytest.raises(ValueError, match="image tokens"):
        tok.spec.text_ids("an [IMG] in the text")
    assert tok.row(row)["reason"].startswith("text holds one of Emu2's image tokens")
    monkeypatch.setattr(type(tok.spec), "text_ids", lambda self, text: self.tokenizer(text, add_special_tokens=False)["input_ids"])
    out = tok.row(row)  # past text_ids: the layout / pixels check in the tokenize stage
    assert (out["stage"], out["split"]) == ("tokenize", "rejected") and "pixel images" in out["reason"]
