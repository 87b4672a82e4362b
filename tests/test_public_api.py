"""The public surface is exactly what __all__ says (httpx's tests/test_exported_members.py)."""

from __future__ import annotations

import modelcrate as mc


def test_all_names_exist_and_every_public_name_is_exported() -> None:
    assert all(hasattr(mc, name) for name in mc.__all__)
    public = {
        name
        for name, value in vars(mc).items()
        if not name.startswith("_")
        and not getattr(value, "__name__", "").startswith("modelcrate.")
        and name
        not in {
            "annotations",
            "version",
            "PackageNotFoundError",
            "TYPE_CHECKING",
            "Any",
            "importlib",
            "sys",
            "types",
        }
    }
    assert public <= set(mc.__all__), public - set(mc.__all__)


def test_every_error_is_a_modelcrate_error_with_an_exit_code() -> None:
    errors = [
        getattr(mc, n)
        for n in mc.__all__
        if n.endswith(("Error", "Conflict", "Found", "Unavailable", "Reference"))
    ]
    assert len(errors) >= 10
    for error in errors:
        assert issubclass(error, mc.ModelcrateError)
        assert error.exit_code in (1, 2)
    assert issubclass(mc.NotFound, LookupError) and issubclass(mc.InputError, ValueError)


def test_import_is_lazy() -> None:
    """`import modelcrate` loads no framework, database or runtime until a name is used."""
    import subprocess
    import sys

    script = (
        "import sys, modelcrate as mc; heavy = ['sqlalchemy', 'onnxruntime', 'onnx', 'torch', "
        "'pydantic', 'httpx']; print([m for m in heavy if m in sys.modules]); mc.Registry; "
        "print('modelcrate.registry.api' in sys.modules, 'sqlalchemy' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout.split("\n")
    assert out[0] == "[]" and out[1] == "True False"  # SQLAlchemy only migrates schemas


def test_names_shared_with_subpackages_stay_functions() -> None:
    """`pack` and `optimize` are functions even when their subpackages were imported first."""
    import subprocess
    import sys

    script = (
        "import modelcrate.pack.tflite, modelcrate.optimize.parity, modelcrate as mc; "
        "print(callable(mc.pack), mc.pack.__module__, mc.optimize.__module__)"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == ["True", "modelcrate.pack", "modelcrate.optimize"]
