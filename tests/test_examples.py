"""The runnable examples run, on the tiny data they make themselves."""

import subprocess
import sys
from pathlib import Path

from hpa_embed.models import load_checkpoint

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_custom_training_loop_writes_a_checkpoint_that_loads(tmp_path):
    script = EXAMPLES / "custom_training_loop.py"
    command = [sys.executable, str(script), "--out", str(tmp_path), "--epochs", "1"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "epoch 1: mean loss" in result.stdout
    model, config, extra = load_checkpoint(tmp_path / "checkpoint")
    assert config.arch == "resnet18" and config.crop_size == 32 and extra["epoch"] == 1


def test_examples_use_public_names_only():
    for path in EXAMPLES.glob("*.py"):
        text = path.read_text()
        assert "import _" not in text and "._" not in text.replace("__", ""), path
