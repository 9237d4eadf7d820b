"""Sphinx configuration of the API reference (build: see README, "API documentation")."""
import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(__file__, '..', '..', '..')))

project = 'mrdib-pyg'
author = 'mrdib-pyg developers'
extensions = ['sphinx.ext.autodoc', 'sphinx.ext.napoleon', 'sphinx.ext.mathjax',
              'sphinx.ext.viewcode']
autodoc_member_order = 'bysource'
autodoc_default_options = {'members': True, 'show-inheritance': True}
autodoc_typehints = 'none'  # the docstrings state types and shapes, PyG-style
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
exclude_patterns = ['_build']
html_theme = 'alabaster'
html_static_path = []
nitpicky = False
suppress_warnings = ['ref.python']  # torch/PyG classes are named without intersphinx
