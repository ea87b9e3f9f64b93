"""Runs the browser extension's pure-logic unit tests (``node --test tests/js/``) as part of pytest."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_js_unit_tests_pass():
    node = shutil.which("node")
    if node is None:
        if os.environ.get("CI", "").lower() in ("1", "true"):
            pytest.fail("node is required for the JS unit tests in CI")
        pytest.skip("node not installed")
    proc = subprocess.run([node, "--test", "tests/js/"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    passed = re.search(r"^# pass (\d+)", out, re.M)
    failed = re.search(r"^# fail (\d+)", out, re.M)
    assert proc.returncode == 0, out[-4000:]
    assert passed and int(passed.group(1)) > 0 and failed and int(failed.group(1)) == 0, out[-2000:]
    print(f"\nnode --test tests/js/: {passed.group(1)} passed")
