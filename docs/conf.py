"""Sphinx configuration of the rnnjax documentation (``sphinx-build -W -b html docs out``)."""

import os
import sys

sys.path.insert(0, os.path.abspath(".."))

import rnnjax  # noqa: E402

project = "rnnjax"
author = "The rnnjax authors"
copyright = "the rnnjax authors; Apache-2.0"
release = rnnjax.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
]
autodoc_default_options = {"members": True, "member-order": "bysource"}
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_use_ivar = True  # "Attributes:" as fields, not a second description of each field
exclude_patterns = ["_build"]
html_theme = "alabaster"
html_static_path = ["_static"]
html_title = f"rnnjax {release}"
