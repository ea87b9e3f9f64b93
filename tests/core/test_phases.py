"""Styles in space and time (nodes/core/phases.py): which styles act where at each step, and the ended-style rule."""

from __future__ import annotations

import torch
from comfyui_diffstyler.nodes.core.phases import StylePhases, fuse_phase, step_styles


def halves():
    left = torch.zeros(1, 1, 2, 4)
    left[..., :2] = 1
    return left, 1 - left


def test_step_styles_follow_comfyuis_timestep_range_rule():
    sigmas = [10.0, 5.0, 2.0, 1.0, 0.0]
    bounds = {0: (10.0, 0.0), 1: (5.0, 2.0), 2: (3.0, 3.0)}  # style 2: an empty range between two steps
    assert step_styles(bounds, sigmas) == [(0,), (0, 1), (0, 1), (0,)]


def test_an_ended_style_hands_its_region_to_the_base_branch_with_the_exact_background():
    left, right = halves()
    phases = StylePhases({0: left, 1: right}, [(0, 1), (1,), (1,)], exact=True, shape=(1, 1, 2, 4))
    assert phases.ended == [(), (0,), (0,)]
    first, later = phases.at(0), phases.at(1)
    assert first.base is None and torch.equal(first.content, torch.zeros(1, 1, 2, 4))
    assert torch.equal(later.base, left) and torch.equal(later.content, torch.zeros(1, 1, 2, 4))
    assert bool(later.inside.all()), "the ended region keeps following the sampler"
    assert [phases.needs_base(s) for s in range(3)] == [False, True, True]
    assert bool(phases.final_inside().all())


def test_a_later_style_on_the_same_region_takes_it_over_without_base_rows():
    left, _right = halves()
    phases = StylePhases({0: left, 1: left}, [(0,), (1,)], exact=True, shape=(1, 1, 2, 4))
    assert phases.ended == [(), (0,)] and not phases.any_base()
    assert torch.equal(phases.at(1).inside, left.bool())


def test_untouched_regions_keep_the_content_and_the_model_background_is_the_base_everywhere():
    left, right = halves()
    late = StylePhases({0: left}, [(), (0,)], exact=True, shape=(1, 1, 2, 4))
    assert not bool(late.at(0).inside.any()) and torch.equal(late.at(0).content, torch.ones(1, 1, 2, 4))
    model = StylePhases({0: left}, [(0,), ()], exact=False, shape=(1, 1, 2, 4))
    assert model.ended == [(), ()] and torch.equal(model.at(1).base, torch.ones(1, 1, 2, 4))
    assert model.at(1).content is None


def test_fuse_phase_weights_sum_to_one():
    left, right = halves()
    phases = StylePhases({0: left, 1: right}, [(1,)], exact=True, shape=(1, 1, 2, 4))
    phase = phases.phase((1,), (0,))
    style, base, content = torch.full((1, 4, 2, 4), 2.0), torch.full((1, 4, 2, 4), 3.0), torch.zeros(1, 4, 2, 4)
    out = fuse_phase(phase, {1: style}, base, content)
    assert torch.equal(out[..., 2:], style[..., 2:]) and torch.equal(out[..., :2], base[..., :2])
    plain = phases.phase((1,), ())
    out = fuse_phase(plain, {1: style}, None, content)
    assert torch.equal(out[..., :2], content[..., :2])
