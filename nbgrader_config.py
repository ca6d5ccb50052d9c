# nbgrader (and a JupyterHub formgrader) looks for this file in the course root.
# The whole configuration is course_config.py; this only includes it.
load_subconfig("course_config.py")  # noqa: F821 - injected by traitlets' config loader
