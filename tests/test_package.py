import importlib
import subprocess
import sys

import pytest

import hpa_embed


def test_import_is_light_and_touches_no_heavy_stage():
    code = "import sys, hpa_embed; print(sorted(m for m in ('torch', 'faiss', 'umap') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_every_public_name_resolves():
    public = hpa_embed._PUBLIC
    assert hpa_embed.__all__ == ["__version__", *public]
    assert dir(hpa_embed) == sorted(hpa_embed.__all__)
    problems = []
    for name, module_name in public.items():
        module = importlib.import_module(f"hpa_embed.{module_name}")
        value = getattr(hpa_embed, name, None)
        # the mapping names the module that exports the object, and the package hands out that object
        if value is None or value is not getattr(module, name, None):
            problems.append(f"hpa_embed.{name} is {value!r}, not hpa_embed.{module_name}.{name}")
            continue
        if name not in getattr(module, "__all__", ()):
            problems.append(f"{name} is not in hpa_embed.{module_name}.__all__")
        defined_in = getattr(value, "__module__", None)
        # a package may export what its own submodules define; constants carry no module
        if callable(value) and defined_in is not None and not (
            defined_in == module.__name__ or defined_in.startswith(module.__name__ + ".")
        ):
            problems.append(f"{name} is defined in {defined_in}, not in hpa_embed.{module_name}")
    assert not problems, "\n".join(problems)
    with pytest.raises(AttributeError, match="no_such_name"):
        hpa_embed.no_such_name  # noqa: B018
    with pytest.raises(ImportError):
        from hpa_embed import no_such_name  # noqa: F401
