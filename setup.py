"""Build of the optional compiled linear-merge kernel (src/rmtllmf/fusion/fast/_linear_kernel.c).

The kernel is plain C loaded with ctypes (no Python C API). It is optional: where no C compiler
is found the build goes on without it and merges take the numpy path.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "rmtllmf.fusion.fast._linear_kernel",
            sources=["src/rmtllmf/fusion/fast/_linear_kernel.c"],
            # -O2: at -O3 GCC 12 fully unrolls the tile loops and runs ~10% slower here;
            # no contraction into fused multiply-adds, so results are the same on every CPU.
            extra_compile_args=["-O2", "-ffp-contract=off", "-pthread"],
            extra_link_args=["-pthread"],
            optional=True,
        )
    ]
)
