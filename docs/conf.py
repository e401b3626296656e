# Sphinx configuration of the collection's static site (`make site`): the README and every committed notebook with
# its outputs, rendered by myst-nb with execution off. helpers/harness/site.py stages the sources next to this file.
project = "usable-xai-notebooks"
author = "the usable-xai-notebooks contributors"
copyright = "2026, " + author
extensions = ["myst_nb"]
nb_execution_mode = "off"                 # render the committed outputs; never run a kernel
nb_output_stderr = "remove"               # warnings and progress chatter stay out of the book
myst_enable_extensions = ["dollarmath", "colon_fence"]
myst_heading_anchors = 3
suppress_warnings = ["myst.header", "myst.xref_missing", "misc.highlighting_failure", "mystnb.unknown_mime_type"]
exclude_patterns = ["_build", "**.ipynb_checkpoints"]
html_theme = "pydata_sphinx_theme"
html_title = project
html_theme_options = {"navigation_with_keys": False, "show_toc_level": 2, "secondary_sidebar_items": ["page-toc"]}
html_static_path: list[str] = []
