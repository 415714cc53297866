"""Using a trained adapter: cached interleaved generation, held-out / MagicBrush / InterleavedBench scoring."""
