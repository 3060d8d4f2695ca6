"""Run by test_embed.py under torchrun: embed a store with 2 processes."""

import sys

from hpa_embed.embed import embed_store

if __name__ == "__main__":
    embed_store(sys.argv[1], sys.argv[2], out=sys.argv[3], batch_size=16, device="cpu", progress=False)
