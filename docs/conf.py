"""Sphinx settings of the vfcore site: the committed notebooks, shown with the outputs they have.

`docs/build.py` (`make site`) stages the README, the notebooks and the claims tables into a
source folder and builds it with this configuration. Nothing is executed and nothing is fetched:
the theme is Sphinx's built-in alabaster and MathJax is served from the site itself.
"""

project = "vfcore"

extensions = ["myst_nb", "sphinx-mathjax-offline"]

# The notebooks are committed executed: render their stored outputs, never run them.
nb_execution_mode = "off"
# The notebooks write their formulas as $...$ and $$...$$, as JupyterLab renders them.
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3

root_doc = "index"
# README.md is pulled into the index by an include; the claims Markdown into the claims page.
exclude_patterns = ["README.md", "figures/**"]

html_theme = "alabaster"
html_theme_options = {
    "page_width": "1180px",
    "sidebar_width": "250px",
    "description": "Vanishing Feature: diagnosing model merging, reproducibly",
    "show_relbars": True,
    "show_powered_by": False,
}
html_static_path = ["_static"]
html_css_files = ["site.css"]
html_title = "vfcore"
html_copy_source = False
html_show_sourcelink = False
html_show_copyright = False
