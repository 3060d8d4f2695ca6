import subprocess
import sys

import hpa_embed


def test_import_is_light_and_touches_no_heavy_stage():
    code = "import sys, hpa_embed; print(sorted(m for m in ('torch', 'faiss', 'umap') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_every_public_name_resolves():
    for name in hpa_embed.__all__:
        assert getattr(hpa_embed, name) is not None, name
    assert hpa_embed.fit.__module__ == "hpa_embed.train"
