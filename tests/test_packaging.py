"""kernels/ ships as gpurnn.kernels (never as a top-level `kernels`), in wheels and editable installs."""
import pathlib
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
