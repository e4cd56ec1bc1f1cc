"""setuptools' build backend, with the package metadata written under build/ instead of the repo root.

An install (editable or not) writes `cookbook.egg-info`; beside the sources, run from the repo root,
it would come first on sys.path and hide the installed metadata, and inspect would then register
our tasks without their `cookbook/` prefix (`inspect eval cookbook/ifeval` finds nothing). The
`[tool.distutils.egg_info]` table of pyproject.toml points setuptools at build/, which must exist.
"""

import os

from setuptools.build_meta import *  # noqa: F403  (this module is setuptools' backend)

os.makedirs("build", exist_ok=True)
