"""Run by test_pipeline.py under torchrun: the tiny run with 2 processes; each writes what it ran."""

import dataclasses
import json
import os
import sys
from pathlib import Path

from hpa_embed.pipeline import load_named_config, run_pipeline

if __name__ == "__main__":
    config = load_named_config("tiny")
    config = config.replace(train=dataclasses.replace(config.train, device="cpu"))
    result = run_pipeline(config, sys.argv[1], workers=1, progress=False)
    ran = Path(sys.argv[2]) / f"rank{os.environ['RANK']}.json"
    ran.write_text(json.dumps({"ran": result.ran, "skipped": result.skipped}))
