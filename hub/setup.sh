#!/usr/bin/env bash
# Set up one host to run the Attention Surgeon on JupyterHub. Run as root from a clone of the course;
# `--prerequisites` installs only the Debian and npm packages (steps 1 and 2).
# safe to run again (it brings the host up to date). README.md, "Running the course on JupyterHub",
# walks through it. Every setting below can be changed by the environment variable of the same name.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"

# Where the hub's shared Python (the hub, every user's server and kernels, the grader) and its state live.
HUB_PREFIX="${HUB_PREFIX:-/opt/attention-surgeon}"
HUB_VENV="${HUB_VENV:-$HUB_PREFIX/venv}"
# nbgrader's exchange: released assignments, submissions and feedback pass through it.
HUB_EXCHANGE="${HUB_EXCHANGE:-/srv/nbgrader/exchange}"
# The grader account (an ordinary user, never root) and the course folder it owns.
HUB_GRADER="${HUB_GRADER:-grader-attention-surgeon}"
HUB_COURSE_DIR="${HUB_COURSE_DIR:-/home/$HUB_GRADER/attention-surgeon}"
# Unix groups the hub lets in (hub/jupyterhub_config.py): students, and graders.
HUB_STUDENT_GROUP="${HUB_STUDENT_GROUP:-attention-surgeon-students}"
HUB_GRADER_GROUP="${HUB_GRADER_GROUP:-attention-surgeon-graders}"
# Student accounts to make (for trying the hub out: `make hub`); each one's password is its name.
# On a real course, students are accounts the host already has: add them to $HUB_STUDENT_GROUP.
HUB_STUDENTS="${HUB_STUDENTS:-}"
# Pinned here as jupyterhub and nbgrader are in requirements.txt.
CHP_VERSION="5.3.0"
PYTHON="${PYTHON:-/usr/bin/python3}"

say() { echo "hub/setup.sh: $*"; }
[ "$(id -u)" = 0 ] || { say "run me as root (I make accounts and the exchange)"; exit 2; }
# One set-up at a time on a host (useradd, apt-get and npm do not like company).
exec 8>/run/lock/attention-surgeon-hub-setup.lock 2>/dev/null || exec 8>/tmp/attention-surgeon-hub-setup.lock
flock 8

# 1. Debian packages: bubblewrap (the grading sandbox), Node.js and npm (the proxy), venv for Python.
missing=()
command -v bwrap >/dev/null 2>&1 || missing+=(bubblewrap)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
"$PYTHON" -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]} from Debian"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# 2. configurable-http-proxy, the hub's proxy, from npm.
if [ "$(configurable-http-proxy --version 2>/dev/null)" != "$CHP_VERSION" ]; then
  say "installing configurable-http-proxy $CHP_VERSION from npm"
  npm install -g --no-fund --no-audit --loglevel=error "configurable-http-proxy@$CHP_VERSION" >/dev/null
fi

# (`hub/setup.sh --prerequisites` stops here: CI installs the hub tests' tools this way.)
[ "${1:-}" = "--prerequisites" ] && { say "prerequisites are installed"; exit 0; }

# 3. The shared Python: requirements.lock in a venv every account can read. One build at a time.
mkdir -p "$(dirname "$HUB_VENV")"
make -s -C "$REPO" venv VENV="$HUB_VENV" PYTHON="$PYTHON"
chmod -R a+rX "$HUB_VENV"
# Students get the Assignment List and Validate; formgrader, the course list and the
# create-assignment tool are off for everyone here, and back on for the grader (step 6). These are
# the files `jupyter server extension disable` and `jupyter labextension disable` write; written
# directly because their `--user` counterparts refuse extensions installed in the venv.
mkdir -p "$HUB_VENV/etc/jupyter/jupyter_server_config.d" "$HUB_VENV/etc/jupyter/labconfig"
cat > "$HUB_VENV/etc/jupyter/jupyter_server_config.d/zz-attention-surgeon-hub.json" <<'JSON'
{"ServerApp": {"jpserver_extensions": {"nbgrader.server_extensions.formgrader": false,
                                       "nbgrader.server_extensions.course_list": false}}}
JSON
cat > "$HUB_VENV/etc/jupyter/labconfig/page_config.json" <<'JSON'
{"disabledExtensions": {"@jupyter/nbgrader:formgrader": true, "@jupyter/nbgrader:course-list": true,
                        "@jupyter/nbgrader:create-assignment": true}}
JSON
# JupyterLab asks no one about news or updates from a course host (no pop-up, no outbound calls).
mkdir -p "$HUB_VENV/share/jupyter/lab/settings"
cat > "$HUB_VENV/share/jupyter/lab/settings/overrides.json" <<'JSON'
{"@jupyterlab/apputils-extension:notification": {"fetchNews": "false", "checkForUpdates": false}}
JSON
# Every account's nbgrader (students' and grader's) finds the course and the exchange here.
mkdir -p "$HUB_VENV/etc/jupyter"
sed "s|@HUB_EXCHANGE@|$HUB_EXCHANGE|" "$REPO/hub/nbgrader_config.students.py" > "$HUB_VENV/etc/jupyter/nbgrader_config.py"
chmod a+r "$HUB_VENV/etc/jupyter/nbgrader_config.py"

# Collection (autograder/collect.py) never copies a file with a second hard link; with Linux's
# protected_hardlinks (Debian's default) no account can link another's file, so a classmate cannot
# make a student's own notebook look like one.
if [ "$(cat /proc/sys/fs/protected_hardlinks 2>/dev/null)" != 1 ]; then
  sysctl -qw fs.protected_hardlinks=1 2>/dev/null || say "WARNING: could not set fs.protected_hardlinks=1"
fi

# 4. The exchange: writable by every account (nbgrader's documented ugo+rwx), with the sticky bit so
#    that no account can delete or rename another's entries.
mkdir -p "$HUB_EXCHANGE"
chmod ugo+rwx,+t "$HUB_EXCHANGE"

# 5. Accounts and groups.
getent group "$HUB_STUDENT_GROUP" >/dev/null || groupadd "$HUB_STUDENT_GROUP"
getent group "$HUB_GRADER_GROUP" >/dev/null || groupadd "$HUB_GRADER_GROUP"
make_account() {  # make_account NAME GROUP [PASSWORD]: an ordinary account with a home
  if ! id "$1" >/dev/null 2>&1; then
    useradd -m -s /bin/bash "$1"
    say "made account $1"
    if [ -n "${3:-}" ]; then echo "$1:$3" | chpasswd; else say "set its password: passwd $1"; fi
  fi
  usermod -aG "$2" "$1"
}
# The grader's password: HUB_GRADER_PASSWORD, or none until you set one (passwd).
make_account "$HUB_GRADER" "$HUB_GRADER_GROUP" "${HUB_GRADER_PASSWORD:-}"
for student in $HUB_STUDENTS; do make_account "$student" "$HUB_STUDENT_GROUP" "$student"; done

# 6. The course folder, owned by the grader: this course package, using the shared Python.
#    Grading state (gradebook.db, submitted/, autograded/, feedback/) is kept when this runs again.
as_grader() { runuser -u "$HUB_GRADER" -- env HOME="$(getent passwd "$HUB_GRADER" | cut -d: -f6)" "$@"; }
mkdir -p "$HUB_COURSE_DIR"
(cd "$REPO" && git ls-files -z --cached --others --exclude-standard) \
  | (cd "$REPO" && xargs -0 cp -p --parents -t "$HUB_COURSE_DIR")  # -p: mtimes, so make sees the venv current
ln -sfn "$HUB_VENV" "$HUB_COURSE_DIR/.venv"
chown -R "$HUB_GRADER:" "$HUB_COURSE_DIR"
chown -h "$HUB_GRADER:" "$HUB_COURSE_DIR/.venv"
# The course folder holds the solutions, the hidden checks and the gradebook: the grader's alone. (useradd
# makes homes 0755 where login.defs sets no HOME_MODE, as Debian's does not, so the folder must close itself.)
chmod 700 "$HUB_COURSE_DIR"
grader_home="$(getent passwd "$HUB_GRADER" | cut -d: -f6)"
as_grader mkdir -p "$grader_home/.jupyter"
sed -e "s|@HUB_COURSE_DIR@|$HUB_COURSE_DIR|" -e "s|@HUB_STUDENT_GROUP@|$HUB_STUDENT_GROUP|" \
  "$REPO/hub/nbgrader_config.grader.py" \
  | as_grader tee "$grader_home/.jupyter/nbgrader_config.py" >/dev/null
as_grader mkdir -p "$grader_home/.jupyter/jupyter_server_config.d" "$grader_home/.jupyter/labconfig"
as_grader tee "$grader_home/.jupyter/jupyter_server_config.d/attention-surgeon-grader.json" >/dev/null <<'JSON'
{"ServerApp": {"jpserver_extensions": {"nbgrader.server_extensions.formgrader": true}}}
JSON
as_grader tee "$grader_home/.jupyter/labconfig/page_config.json" >/dev/null <<'JSON'
{"disabledExtensions": {"@jupyter/nbgrader:formgrader": false, "@jupyter/nbgrader:create-assignment": false}}
JSON

# 7. The hub's own state (its database and cookie secret), readable by root only.
mkdir -p "$HUB_PREFIX/state"
chmod 700 "$HUB_PREFIX/state"
say "done. Start the hub with: HUB_PREFIX=$HUB_PREFIX bash $REPO/hub/start.sh"
