# Package layout only (metadata is in pyproject.toml): the AOT pipeline lives in compile/ but
# installs as `lpm_compile`, never as a bare top-level `compile` module.
from setuptools import find_packages, setup

setup(
    # lpm_rt.assets.demo holds the shipped model's files only (no __init__.py): named here so its
    # package data installs without setuptools' "absent from packages" warning
    packages=find_packages(include=["lpm_rt", "lpm_rt.*", "csrc_triton", "csrc_triton.*"]) + ["lpm_rt.assets.demo"]
    + ["lpm_compile" + p[len("compile"):] for p in find_packages(include=["compile", "compile.*"])],
    package_dir={"lpm_compile": "compile"},
)
