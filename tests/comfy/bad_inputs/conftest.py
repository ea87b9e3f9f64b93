"""The shared fixtures of the bad-input tests, in one place for every module here (``tests/support/dst_fixtures.py``;
``one_torch_thread`` is autouse: the tiny models run on one torch thread)."""

from dst_fixtures import (  # noqa: F401 - fixtures
    content,
    content_latent,
    fastsam_models,
    inverted,
    loras,
    mods,
    one_torch_thread,
    probe,
    prompts,
    stays_clean,
    yolo_config,
)
