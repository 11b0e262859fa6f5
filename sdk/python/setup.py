"""Builds the package with the partner API's modules generated from proto/
(generate.py) beside the SDK, so `pip install sdk/python` from the
repository is all a partner runs."""

import os
import sys

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import generate  # noqa: E402


class BuildWithProtos(build_py):
    """build_py, after generating the protobuf and gRPC modules into the
    build's own tree."""

    def run(self):
        super().run()
        generate.generate(self.build_lib)


setup(cmdclass={"build_py": BuildWithProtos})
