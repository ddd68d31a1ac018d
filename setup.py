"""Packaging glue pyproject.toml cannot say alone: ship the top-level profiles/ folder as mobilekit.profiles."""

from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["mobilekit", "mobilekit.*", "converters", "converters.*"]) + ["mobilekit.profiles"],
    package_dir={"mobilekit": "mobilekit", "converters": "converters", "mobilekit.profiles": "profiles"},
)
