"""How far apart a VAE's latents put the colours a teacher must tell apart.

A teacher learns in the VAE's normalised latent space: two captions whose clips encode to nearby latents give it a
small, easily drowned training signal. For each seed the same clip (layout, motion, background) is rendered in every
palette colour and encoded; the distance between two colour versions is divided by the distance between the clip and
another clip of the same caption (another start position and background), so 1.0 means "as different as a new
layout" and small values mean the teacher sees the two colours as nearly the same video. Pure measurement; no I/O.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import replace

import numpy as np
import torch
from diffusers import AutoencoderKLWan

from dcm.models.wan import latent_stats
from dcm_demo.world import WorldConfig, render, sample_attributes

# Seeds of the second layout of each clip are offset by this much from the first's.
OTHER_LAYOUT_OFFSET = 1_000_003


@torch.no_grad()
def colour_separation(vae: AutoencoderKLWan, world: WorldConfig, seeds: range) -> dict[str, float]:
    """``{"blue~purple": 0.13, ...}``: mean over seeds of (latent distance between the clip in two colours) / (latent
    distance between the clip and another layout of the same caption), for every pair of ``world.colours``.

    Latents are the posterior mode, normalised with the VAE config's statistics (:func:`dcm.models.wan.latent_stats`,
    as Wan pipelines do), flattened over (C, F, H, W).
    """
    colours = world.colours
    ratios = {pair: [] for pair in itertools.combinations(range(len(colours)), 2)}
    for seed in seeds:
        rng = np.random.default_rng(seed)
        attributes = sample_attributes(rng, world)
        clips = [render(replace(attributes, colour=c), world, copy.deepcopy(rng)).frames for c in colours]
        clips.append(render(attributes, world, np.random.default_rng(seed + OTHER_LAYOUT_OFFSET)).frames)
        pixels = torch.from_numpy(np.stack(clips)).float().permute(0, 4, 1, 2, 3) / 127.5 - 1  # (K+1, 3, F, H, W)
        z = vae.encode(pixels).latent_dist.mode()
        mean, std = latent_stats(vae, z)
        latents = ((z - mean) / std).flatten(1)
        distances = torch.cdist(latents, latents)
        own = colours.index(attributes.colour)
        layout = distances[own, -1].item()
        for i, j in ratios:
            ratios[i, j].append(distances[i, j].item() / layout)
    return {f"{colours[i]}~{colours[j]}": float(np.mean(r)) for (i, j), r in ratios.items()}
