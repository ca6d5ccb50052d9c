"""A real JupyterHub on 127.0.0.1 for the hub tests, set up by the course's own hub/setup.sh.

What a course gets from the README's recipe: real Unix accounts (made here, removed after),
the real proxy, real single-user servers spawned by the hub as each account, and the grader
account, an ordinary user. Tests drive it through the APIs the nbgrader extensions call.

Needs root (accounts, and a hub that starts servers as other users), bubblewrap, Node.js.
The shared Python is built once per lock file in SHARED_VENV and kept between runs.
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parent.parent
SHARED_VENV = Path("/var/tmp/attention-surgeon-tests/hub-venv")
COURSE_ID = "attention-surgeon"
ASSIGNMENT = "attention_surgeon"


def skip_reason():
    if os.geteuid() != 0:
        return "the hub tests make Unix accounts and start a hub that spawns servers as them: they need root"
    for tool in ("useradd", "runuser", "bwrap"):
        if not shutil.which(tool):
            return f"the hub tests need {tool}"
    if not Path("/usr/bin/python3").exists():
        return "the hub tests build the shared Python from Debian's /usr/bin/python3"
    return None


requires_hub_host = pytest.mark.skipif(skip_reason() is not None, reason=skip_reason() or "")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Hub:
    """One hub, its accounts and its folders."""
    tag: str  # short and unique: account names are '<tag>-grader', '<tag>-s1', ...
    prefix: Path
    students: list
    process: subprocess.Popen = None
    port: int = 0
    admin_token: str = field(default_factory=lambda: uuid.uuid4().hex)
    log: Path = None

    @property
    def grader(self):
        return f"{self.tag}-grader"

    @property
    def exchange(self):
        return self.prefix / "exchange"

    @property
    def course(self):
        return Path(f"/home/{self.grader}/attention-surgeon")

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def settings(self):
        """The environment variables of hub/setup.sh and hub/start.sh for this hub."""
        return {"HUB_PREFIX": str(self.prefix), "HUB_VENV": str(SHARED_VENV), "HUB_EXCHANGE": str(self.exchange),
                "HUB_GRADER": self.grader, "HUB_GRADER_PASSWORD": self.grader, "HUB_STUDENTS": " ".join(self.students),
                "HUB_STUDENT_GROUP": f"{self.tag}-students", "HUB_GRADER_GROUP": f"{self.tag}-graders"}

    # --- as an account ---------------------------------------------------------------------------
    def run_as(self, user, *command, cwd=None, timeout=900, check=True, env=None, input_text=None):
        """`command` as Unix account `user`, with a login-like environment (as in a hub terminal)."""
        home = f"/home/{user}"
        environment = {"HOME": home, "USER": user, "LOGNAME": user, "LANG": "C.UTF-8",
                       "PATH": f"{SHARED_VENV}/bin:/usr/local/bin:/usr/bin:/bin",
                       "ATTENTION_SURGEON_EXCHANGE": str(self.exchange), **(env or {})}
        result = subprocess.run(["runuser", "-u", user, "--", "env", "-i",
                                 *[f"{k}={v}" for k, v in environment.items()], *command],
                                cwd=cwd or home, capture_output=True, text=True, timeout=timeout, input=input_text)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(command)} as {user} failed ({result.returncode}):\n"
                                 f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
        return result

    # --- through the hub -------------------------------------------------------------------------
    def api(self, method, path, **kw):
        response = requests.request(method, f"{self.url}/hub/api{path}", timeout=60,
                                    headers={"Authorization": f"token {self.admin_token}"}, **kw)
        response.raise_for_status()
        return response.json() if response.content else None

    def start_server(self, user):
        """The user's own server, spawned by the hub as that user; returns a token for it."""
        self.api("POST", f"/users/{user}")
        self.api("POST", f"/users/{user}/server")
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            server = self.api("GET", f"/users/{user}")["servers"].get("", {})
            if server.get("ready"):
                break
            time.sleep(0.5)
        else:
            raise AssertionError(f"the hub did not start {user}'s server:\n{self.log.read_text()[-3000:]}")
        return self.api("POST", f"/users/{user}/tokens", json={"expires_in": 3600, "note": "hub tests"})["token"]

    def server(self, user, token):
        return UserServer(f"{self.url}/user/{user}", token)


@dataclass
class UserServer:
    """A user's single-user server, called as the JupyterLab extensions call it."""
    base: str
    token: str

    def request(self, method, path, **kw):
        response = requests.request(method, f"{self.base}{path}", timeout=300,
                                    headers={"Authorization": f"token {self.token}"}, **kw)
        response.raise_for_status()
        return response

    def assignments(self):
        """The Assignment List's own call: what this student may fetch, has fetched, has submitted."""
        reply = self.request("GET", "/assignments", params={"course_id": COURSE_ID}).json()
        assert reply["success"], reply
        return reply["value"]

    def action(self, action):
        """Fetch, submit or fetch_feedback, as the Assignment List's buttons do."""
        reply = self.request("POST", f"/assignments/{action}",
                             data={"course_id": COURSE_ID, "assignment_id": ASSIGNMENT}).json()
        assert reply.get("success", True) is not False and "value" in reply, reply
        return reply["value"]

    def read_notebook(self, path):
        return self.request("GET", f"/api/contents/{path}", params={"content": 1}).json()["content"]

    def save_notebook(self, path, nb):
        self.request("PUT", f"/api/contents/{path}", data=json.dumps({"type": "notebook", "content": nb}))

    def listing(self, path=""):
        return [item["name"] for item in self.request("GET", f"/api/contents/{path}").json()["content"]]


def setup_hub(tag, students):
    """Run hub/setup.sh for a hub of our own, start it, and return it (stop it with `teardown_hub`)."""
    prefix = Path(f"/var/tmp/attention-surgeon-tests/{tag}")
    shutil.rmtree(prefix, ignore_errors=True)
    hub = Hub(tag=tag, prefix=prefix, students=list(students))
    prefix.mkdir(parents=True)
    started = time.monotonic()
    result = subprocess.run(["bash", str(ROOT / "hub" / "setup.sh")], env={**os.environ, **hub.settings()},
                            capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, f"hub/setup.sh failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    hub.setup_seconds = time.monotonic() - started
    hub.port = free_port()
    hub.log = prefix / "hub.log"
    ports = {"HUB_PORT": str(hub.port), "HUB_API_PORT": str(free_port()), "HUB_PROXY_API_PORT": str(free_port())}
    with open(hub.log, "wb") as log:
        hub.process = subprocess.Popen(["bash", str(ROOT / "hub" / "start.sh")], stdout=log, stderr=log,
                                       env={**os.environ, **hub.settings(), **ports,
                                            "HUB_ADMIN_TOKEN": hub.admin_token},
                                       start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{hub.url}/hub/api/", timeout=2).ok:
                return hub
        except requests.ConnectionError:
            pass
        if hub.process.poll() is not None:
            break
        time.sleep(0.5)
    teardown_hub(hub)
    raise AssertionError(f"the hub did not start:\n{hub.log.read_text()[-4000:]}")


def teardown_hub(hub):
    """Stop the hub (it stops the servers it spawned), kill whatever the accounts still run, and remove
    the accounts, their groups and the hub's folders. The shared venv stays."""
    if hub.process is not None and hub.process.poll() is None:
        os.killpg(hub.process.pid, signal.SIGTERM)
        try:
            hub.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(hub.process.pid, signal.SIGKILL)
            hub.process.wait()
    for user in [hub.grader, *hub.students]:
        subprocess.run(["pkill", "-KILL", "-u", user], capture_output=True)
    time.sleep(0.5)
    for user in [hub.grader, *hub.students]:
        subprocess.run(["userdel", "-r", "-f", user], capture_output=True)
    for group in (f"{hub.tag}-students", f"{hub.tag}-graders"):
        subprocess.run(["groupdel", group], capture_output=True)
    shutil.rmtree(hub.prefix, ignore_errors=True)


def leftover_processes(hub):
    """Processes any of the hub's accounts still run."""
    users = ",".join([hub.grader, *hub.students])
    result = subprocess.run(["ps", "-o", "pid=,user=,args=", "-u", users], capture_output=True, text=True)
    return result.stdout.strip()
