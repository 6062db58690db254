"""The compiled LSTM step (gpurnn/cpu/step.c) builds for macOS and Windows, not only for Linux/GCC.

The wheel ships step.c compiled (setup.py); where a wheel is built, a C compiler of that platform
compiles it: clang on macOS, MSVC or MinGW on Windows. No such machine is at hand, so zig's clang
(the ziglang package, a test dependency) cross-compiles it here for those targets, warnings as
errors, and each output must export every function build.py loads with ctypes.
"""
import re
import subprocess
import sys

import pytest

from gpurnn.cpu import build

pytest.importorskip("ziglang")

EXPORTED = re.findall(r"^EXPORT [^(]*?\b(\w+)\(", build.SOURCE.read_text(), flags=re.M)
FLAGS = [f for f in build.FLAGS if f.startswith(("-O", "-f"))] + ["-Wall", "-Wextra", "-Werror"]


def zig_cc(target, *args, cwd):
    out = subprocess.run([sys.executable, "-m", "ziglang", "cc", "-target", target, *FLAGS, *args,
                          str(build.SOURCE)], capture_output=True, text=True, cwd=cwd, timeout=600)
    assert out.returncode == 0, out.stderr
    return out


def test_the_source_exports_the_functions_build_loads():
    assert sorted(EXPORTED) == ["gru_backward_step", "gru_forward_step", "lstm_backward_step", "lstm_forward_step",
                                "sigmoid_of_negated_array", "step_source_hash", "tanh_array"]


@pytest.mark.parametrize("target", ["x86_64-macos", "aarch64-macos"])
def test_links_as_a_macos_library(target, tmp_path):
    lib = tmp_path / "step.dylib"
    zig_cc(target, "-shared", "-o", str(lib), cwd=tmp_path)   # macOS's linker refuses undefined symbols
    data = lib.read_bytes()
    assert data[:4] == b"\xcf\xfa\xed\xfe"                       # Mach-O 64-bit
    for name in EXPORTED:                                       # Mach-O prefixes C names with _
        assert b"_" + name.encode() + b"\0" in data, name


def test_compiles_for_windows_with_every_function_exported(tmp_path):
    """Compiled only: linking a DLL would first build MinGW's C library (a minute)."""
    obj = tmp_path / "step.o"
    zig_cc("x86_64-windows-gnu", "-c", "-o", str(obj), cwd=tmp_path)
    directives = re.findall(rb"-export:(\w+)", obj.read_bytes())   # what __declspec(dllexport) asks the linker
    assert sorted(d.decode() for d in directives) == sorted(EXPORTED)


def test_a_linux_only_construct_would_fail_here(tmp_path):
    """The check can fail: a Linux-only header compiles neither for macOS nor for Windows."""
    src = tmp_path / "bad.c"
    src.write_text("#include <sys/sysinfo.h>\nint f(void) { return get_nprocs(); }\n")
    for target in ("aarch64-macos", "x86_64-windows-gnu"):
        out = subprocess.run([sys.executable, "-m", "ziglang", "cc", "-target", target, "-c", str(src),
                              "-o", str(tmp_path / "bad.o")], capture_output=True, text=True, timeout=600)
        assert out.returncode != 0 and "sys/sysinfo.h" in out.stderr, target
