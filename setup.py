"""Packaging glue pyproject.toml cannot say alone: the top-level profiles/ and converters/ folders install
inside the mobilekit package, as mobilekit.profiles and mobilekit.converters (a top-level package named
``converters`` would collide with other projects in users' environments)."""

from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["mobilekit", "mobilekit.*"]) + ["mobilekit.profiles", "mobilekit.converters"],
    package_dir={"mobilekit": "mobilekit", "mobilekit.converters": "converters", "mobilekit.profiles": "profiles"},
)
