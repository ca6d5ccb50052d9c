"""JupyterHub for the Attention Surgeon, on one host. hub/start.sh starts it (as root, so that
it can start each user's server as that user); hub/setup.sh prepares the host first.

Who gets in: the Unix accounts in the course's two groups (students, graders), by their
Unix password (PAM). Each gets their own JupyterLab, started from the shared Python that
hub/setup.sh built, with nbgrader's Assignment List and Validate; the grader account also
gets formgrader. Settings come from the same environment variables as hub/setup.sh.
"""
import os
import shutil

c = get_config()  # noqa: F821 - defined when JupyterHub loads this file

HUB_PREFIX = os.environ.get("HUB_PREFIX", "/opt/attention-surgeon")
HUB_VENV = os.environ.get("HUB_VENV", f"{HUB_PREFIX}/venv")

# Where it listens. A real course puts it behind HTTPS (a reverse proxy, or c.JupyterHub.ssl_cert/ssl_key).
c.JupyterHub.ip = os.environ.get("HUB_IP", "127.0.0.1")
c.JupyterHub.port = int(os.environ.get("HUB_PORT", "8000"))
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = int(os.environ.get("HUB_API_PORT", "8081"))
c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{os.environ.get('HUB_PROXY_API_PORT', '8001')}"
c.ConfigurableHTTPProxy.command = [shutil.which("configurable-http-proxy") or "configurable-http-proxy"]

# The hub's state, readable by root only (hub/setup.sh made the folder).
c.JupyterHub.db_url = f"sqlite:///{HUB_PREFIX}/state/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = f"{HUB_PREFIX}/state/jupyterhub_cookie_secret"
c.ConfigurableHTTPProxy.pid_file = f"{HUB_PREFIX}/state/jupyterhub-proxy.pid"

# Unix accounts, by password; only the course's groups.
c.JupyterHub.authenticator_class = "pam"
c.Authenticator.allowed_groups = {
    os.environ.get("HUB_STUDENT_GROUP", "attention-surgeon-students"),
    os.environ.get("HUB_GRADER_GROUP", "attention-surgeon-graders"),
}
c.PAMAuthenticator.open_sessions = False  # no systemd-logind session per server

# Each user's JupyterLab runs as that user, from the shared Python, in their home folder.
c.JupyterHub.spawner_class = "localprocess"
c.Spawner.cmd = [f"{HUB_VENV}/bin/jupyterhub-singleuser"]
c.Spawner.default_url = "/lab"
c.Spawner.notebook_dir = "~"
c.Spawner.environment = {
    "PATH": f"{HUB_VENV}/bin:/usr/local/bin:/usr/bin:/bin",
    "MPLBACKEND": "Agg",
    # nbgrader's exchange (the nbgrader_config.py hub/setup.sh wrote in the venv reads this).
    "ATTENTION_SURGEON_EXCHANGE": os.environ.get("HUB_EXCHANGE", "/srv/nbgrader/exchange"),
}
c.Spawner.http_timeout = 120  # a first start imports JupyterLab and nbgrader: slow on a busy host
c.Spawner.start_timeout = 120

# Scripts (and the test suite) that manage the hub get a service token through the environment;
# without it there is none.
_admin_token = os.environ.get("HUB_ADMIN_TOKEN")
if _admin_token:
    c.JupyterHub.services = [{"name": "course-admin", "api_token": _admin_token}]
    c.JupyterHub.load_roles = [{
        "name": "course-admin",
        "scopes": ["admin:users", "admin:servers", "tokens", "list:users"],
        "services": ["course-admin"],
    }]
