"""Emu2 / Emu2-Gen: continuous visual embeddings, regressed rather than sampled.

An image is ``[IMG]`` + n_query x ``<image>`` + ``[/IMG]`` (n_query = 64 for Emu2 and Emu2-Gen: an
8 x 8 grid). The visual encoder's patch grid is average-pooled to 8 x 8 and flattened row-major
(Emu2's ``encode_image``); ``project_up`` of those embeddings replaces the ``<image>`` token
embeddings, so the sequence is fed as ``inputs_embeds`` and the MoSS layout comes from the
``<image>`` positions after each ``[IMG]``.

Loss: text cross-entropy, plus regression of the visual embeddings: the hidden state at ``[IMG]`` and
at each ``<image>`` predicts the next embedding through ``project_down`` (MSE, or 1 - cosine).

Shards keep pixels, not embeddings: each image is stored as the PNG of the resized (448 x 448 for
the real checkpoints) RGB image, the exact input of the visual encoder before normalisation.

The spec is assembled from one module per capability: hub.py (loading BAAI's checkpoints and Emu2-Gen
pipeline folders), vision.py (pixels -> visual embeddings), loss.py (the mixed CE + regression loss),
generation.py (regressing embeddings, decoding pixels through diffusion.py), standin.py (the tiny
stand-in model of the random presets) and spec.py (the family itself).
"""

from .spec import Emu2Spec

__all__ = ["Emu2Spec"]
