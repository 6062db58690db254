"""The one compiled part: the LSTM's CPU step (gpurnn/cpu/step.c), built into the wheel so that
no C compiler is needed where the package is installed from it. Optional: without a compiler the
install still succeeds, and gpurnn/cpu/build.py builds the step at first use (Linux) or the NumPy
loop runs. Everything else about the package is in pyproject.toml."""
import hashlib
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

# as gpurnn/cpu/build.py's (step.c says why)
GCC_FLAGS = ["-O3", "-ffp-contract=off", "-fno-math-errno"]
MSVC_FLAGS = ["/O2", "/fp:precise", "/std:c11"]


class BuildStep(build_ext):
    def build_extensions(self):
        msvc = self.compiler.compiler_type == "msvc"
        for ext in self.extensions:
            ext.extra_compile_args = MSVC_FLAGS if msvc else GCC_FLAGS
            ext.libraries = [] if msvc else ["m"]   # fmaf, where a CPU has no FMA instruction
        super().build_extensions()


SOURCE = "gpurnn/cpu/step.c"
source_hash = hashlib.sha256(Path(__file__).parent.joinpath(SOURCE).read_bytes()).hexdigest()[:16]
setup(ext_modules=[Extension("gpurnn.cpu._step", [SOURCE], optional=True,
                             define_macros=[("GPURNN_EXTENSION", "1"), ("GPURNN_SOURCE_HASH", f"h{source_hash}")])],
      cmdclass={"build_ext": BuildStep})
