"""Fixtures shared by tests on the real ComfyUI: the pack's modules, prompts, a content picture, its inversion.

Test modules import them by name (``from dst_fixtures import mods, prompts, content, inverted``): a second
``conftest.py`` under tests/ would take the module name ``conftest`` that tests import ``IN_CI`` and friends from.
"""

from __future__ import annotations

import pytest
import torch

STEPS = 10  # the sampling steps of the shared inversion (test_core.STEPS)


@pytest.fixture(scope="module")
def mods(pack):
    from comfyui_diffstyler.nodes import inject, sample, style
    from comfyui_diffstyler.nodes.adapters import inversion
    from comfyui_diffstyler.nodes.adapters.injector import install, layers
    from comfyui_diffstyler.nodes.core import rows

    class M:
        pass

    m = M()
    m.inv, m.style, m.inject, m.sample = inversion, style, inject, sample
    m.install, m.layers, m.rows = install, layers, rows
    return m


@pytest.fixture(scope="module")
def prompts(tiny):
    enc = lambda t: tiny.clip.encode_from_tokens_scheduled(tiny.clip.tokenize(t))  # noqa: E731
    return {
        "empty": enc(""),
        "style": enc("painting of <sss>, deer"),
        "style2": enc("sketch of grass"),
        "base": enc("a deer on grass"),
        "neg": enc("ugly, blurry, black, low res, unrealistic"),
    }


@pytest.fixture(scope="module")
def content(tiny):
    g = torch.Generator().manual_seed(0)
    img = torch.rand(1, 64, 64, 3, generator=g)
    with torch.no_grad():
        return img, tiny.vae.encode(img).float()


@pytest.fixture(scope="module")
def inverted(tiny, mods, content, prompts):
    return mods.inv.invert(tiny.model, content[1], STEPS, prompts["empty"], disable_pbar=True, grid="sampling")
