"""kernels/ ships as gpurnn.kernels (never as a top-level `kernels`), in wheels and editable installs; gpurnn.nn
refuses a torch older than pyproject asks for."""
import pathlib
import shutil
import subprocess
import sys
import zipfile

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_wheel_maps_kernels_under_gpurnn(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path), str(ROOT)], check=True, capture_output=True)
    wheel = next(tmp_path.glob("gpurnn-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "gpurnn/kernels/__init__.py" in names
    assert "gpurnn/cpu/step.c" in names   # the compiled LSTM step's source (a build at first use)
    assert any(n.startswith("gpurnn/cpu/_step.") for n in names)   # and the step itself, prebuilt
    assert not any(n.startswith("kernels/") for n in names)
    target = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(target)
    code = ("import gpurnn.kernels, gpurnn.nn; from gpurnn.cpu import build; "
            "print(gpurnn.kernels.__file__); print(build.describe())")
    # no compiler where it is installed: the prebuilt step runs
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path,
                         env={"PYTHONPATH": str(target), "CC": "false", "GPURNN_CACHE_DIR": str(tmp_path / "cache")},
                         capture_output=True, text=True, check=True)
    where, step = out.stdout.strip().splitlines()
    assert where.startswith(str(target))
    assert step == "compiled (gpurnn/cpu/step.c, prebuilt with the package)"


def test_this_install_imports_kernels_from_the_checkout():
    out = subprocess.run([sys.executable, "-c", "import gpurnn.kernels; print(gpurnn.kernels.__file__)"],
                         cwd="/", capture_output=True, text=True, check=True)
    assert pathlib.Path(out.stdout.strip()) == ROOT / "kernels" / "__init__.py"


def test_a_checkout_on_pythonpath_imports_kernels_as_gpurnn_kernels(tmp_path):
    """As the GPU check runs (PYTHONPATH=the repo root, nothing installed): -S leaves out site's .pth files, so
    the editable install's finder cannot map gpurnn.kernels; the packages come from PYTHONPATH alone."""
    site = next(p for p in sys.path if p.endswith("site-packages") and pathlib.Path(p, "numpy").is_dir())
    code = ("import sys, gpurnn, gpurnn.kernels.common; from gpurnn import kernels; "
            "print(kernels.__file__); print(gpurnn.kernels.common.__file__); "
            "print(not any('editable' in type(f).__module__ for f in sys.meta_path))")
    out = subprocess.run([sys.executable, "-S", "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         env={"PYTHONPATH": f"{ROOT}:{site}"}, check=True)
    init, common, no_editable_finder = out.stdout.split()
    assert pathlib.Path(init) == ROOT / "kernels" / "__init__.py"
    assert pathlib.Path(common) == ROOT / "kernels" / "common.py"
    assert no_editable_finder == "True"


def test_another_checkout_on_pythonpath_uses_its_own_kernels(tmp_path):
    """Beside this install's editable finder (which maps gpurnn.kernels to this checkout), a second checkout put
    first on PYTHONPATH imports its own kernels/, not this one's."""
    for part in ("gpurnn", "kernels"):
        shutil.copytree(ROOT / part, tmp_path / part, ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    code = "import gpurnn.kernels.lstm as k; print(k.__file__)"
    out = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert pathlib.Path(out.stdout.strip()) == tmp_path / "kernels" / "lstm.py"


def test_gpurnn_nn_refuses_a_torch_older_than_it_needs_naming_both_versions():
    code = "import torch; torch.__version__ = '2.7.1+cpu'; import gpurnn.nn"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 1 and "ImportError: gpurnn.nn needs torch >= 2.8, found torch 2.7.1+cpu" in out.stderr
