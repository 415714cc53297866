"""`moss generate` and `moss evaluate`: load a base model and an adapter, answer prompts, score them."""

from __future__ import annotations

import argparse


def _model_arg(args) -> str | None:
    """--model or --adapter (resolve tells them apart by the models:/ scheme)."""
    from ..config import ConfigError

    if args.model is not None and not args.model.startswith("models:/"):
        raise ConfigError(f"--model {args.model!r}: expected models:/NAME/VERSION, models:/NAME@ALIAS or "
                          "models:/<model id> (a folder or runs:/ URI goes to --adapter)")
    return args.model or args.adapter


def _out_dir(args, source, default_root: str):
    """--out (which must be empty: its files are logged as this run's), else <root>/<label>-<time>."""
    import datetime as dt
    from pathlib import Path

    from ..config import ConfigError

    if args.out:
        out = Path(args.out)
        if out.exists() and any(out.iterdir()):
            raise ConfigError(f"--out {out} is not empty: choose a new folder (its files would mix with these)")
        return out
    return Path(default_root) / f"{source.label}-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"


def cmd_generate(args: argparse.Namespace) -> int:
    import json
    import tempfile
    from pathlib import Path

    from ..config import ConfigError
    from ..evaluation.generate import Generator, SamplingConfig
    from ..evaluation.inference import load_model, resolve

    if args.samples < 1 or (args.batch_size is not None and args.batch_size < 1):
        raise ConfigError("--samples and --batch-size must be >= 1")
    prompt = parse_prompt(args.prompt, args.image)
    with tempfile.TemporaryDirectory() as tmp:
        cfg, source = resolve(args.config, args.set, _model_arg(args), args.run, Path(tmp))
        out = _out_dir(args, source, "generated")
        model, spec = load_model(cfg, source)
    g = cfg.generate
    try:
        sampling = SamplingConfig.from_section(g, open_image=args.image_first)
        spec.generation_grid(g.image_size)
    except ValueError as e:
        raise ConfigError(f"generate: {e}") from None
    jobs = [(prompt, sampling.with_(seed=g.seed + i)) for i in range(args.samples)]
    results = dict(Generator(model, spec).generate_many(jobs, args.batch_size or cfg.evaluate.batch_size))
    for i in range(args.samples):
        if isinstance(results[i], ValueError):  # a prompt longer than the model's context
            raise ConfigError(f"generate: {results[i]}") from None
        if isinstance(results[i], Exception):
            raise results[i]
    out.mkdir(parents=True, exist_ok=True)
    samples = [_summary(results[i], spec, out, "" if args.samples == 1 else f"sample_{i}_") for i in range(args.samples)]
    summary = {"prompt": args.prompt, "images_in": args.image, "adapter": source.origin, "run_id": source.run_id}
    summary.update(samples[0] if args.samples == 1 else {"samples": samples})
    (out / "answer.json").write_text(json.dumps(summary, indent=2))
    for i, s in enumerate(samples):
        print(f"generate{'' if args.samples == 1 else f' [{i}]'}: {s['text']!r} (stopped: {s['stop']}, {s['seconds']:.1f}s)")
        for p in s["parts"]:
            if p["type"] == "image":
                print(f"  image {p['height']}x{p['width']}: {out / p.get('image', p.get('codes', p.get('embeddings')))}")
    print(f"answer: {out / 'answer.json'}")
    return 0


def _summary(answer, spec, out, prefix: str) -> dict:
    """One answer for answer.json: its parts (images written to ``out`` as <prefix>image_<k>), text, timing."""
    parts = []
    for p in answer.parts:
        if isinstance(p, str):
            parts.append({"type": "text", "text": p})
            continue
        k = sum(x["type"] == "image" for x in parts)
        entry = {"type": "image", "height": p.size[0], "width": p.size[1], **p.save(out, f"{prefix}image_{k}")}
        if p.image is None:
            entry["note"] = spec.pixel_note
        parts.append(entry)
    n_img = len(answer.image_token_seconds)
    return {"parts": parts, "text": answer.text, "stop": answer.stop, "seconds": round(answer.seconds, 3),
            "image_tokens_per_s": round(n_img / sum(answer.image_token_seconds), 1) if n_img else None}


def parse_prompt(text: str, images: list[str]) -> list:
    """--prompt with <image> placeholders + --image paths -> interleaved segments (images appended if no placeholder)."""
    from ..config import ConfigError
    from ..data.images import ImageError
    from ..evaluation.editing import load_image
    from ..evaluation.generate import interleave

    try:
        loaded = [load_image(p) for p in images]
    except ImageError as e:
        raise ConfigError(f"--image: {e}") from None
    n = text.count("<image>")
    if n > len(loaded):
        raise ConfigError(f"--prompt has {n} <image> placeholder(s) but only {len(loaded)} --image")
    segments = interleave(text, loaded) + loaded[n:]
    if not segments:
        raise ConfigError("an empty prompt: give --prompt and/or --image")
    return segments


def cmd_evaluate(args: argparse.Namespace) -> int:
    import tempfile
    from pathlib import Path

    from ..evaluation.evaluate import evaluate, log_to_mlflow
    from ..evaluation.inference import resolve

    from ..config import ConfigError

    if args.into_run and not args.run:
        raise ConfigError("--into-run writes into a training run: give it with --run")
    if args.batch_size is not None:
        if args.batch_size < 1:
            raise ConfigError("--batch-size must be >= 1")
        args.set = [*(args.set or []), f"evaluate.batch_size={args.batch_size}"]
    with tempfile.TemporaryDirectory() as tmp:
        cfg, source = resolve(args.config, args.set, _model_arg(args), args.run, Path(tmp))
        if args.interleavedbench:  # set directly: a path is not YAML
            cfg.interleavedbench.path = args.interleavedbench
        out = _out_dir(args, source, cfg.evaluate.output)
        results = evaluate(cfg, source, out, judge=args.judge)
    run_id = log_to_mlflow(cfg, source, results, out, into_training_run=args.into_run)
    for key, value in sorted(results["metrics"].items()):
        print(f"  {key:32s} {value:.6g}")
    for section in ("editing", "interleavedbench"):
        for note in results.get(section, {}).get("notes", []):
            print(f"  note ({section}): {note}")
    where = "the training run" if args.into_run else "a new run linked to it" if source.run_id else "a new run"
    print(f"evaluate: results in {out / 'results.json'}; logged to MLflow run {run_id} ({where})")
    return 0
