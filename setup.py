# Package layout only (metadata is in pyproject.toml): the AOT pipeline lives in compile/ but
# installs as `lpm_compile`, never as a bare top-level `compile` module.
from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["lpm_rt", "lpm_rt.*", "csrc_triton", "csrc_triton.*"])
    + ["lpm_compile" + p[len("compile"):] for p in find_packages(include=["compile", "compile.*"])],
    package_dir={"lpm_compile": "compile"},
)
