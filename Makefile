# The Attention Surgeon: every command a user runs. See README.md.
#   instructor: make release          student: make validate NB=...
#   grader:     make autograde / make feedback / make export
#   developer:  make test             CUDA host: make gpu-check
SHELL := /bin/bash
PYTHON ?= python3
# The venv: .venv here, or another place (hub/setup.sh builds the hub's shared one with VENV=/opt/...).
VENV ?= .venv
PY := $(VENV)/bin/python
# nbgrader runs `alembic` as a subprocess: the venv's bin must be on PATH.
# nbgrader reads nbgrader_config.py in this directory, which includes course_config.py.
export PATH := $(abspath $(VENV))/bin:$(PATH)
export PYTHONPATH := $(CURDIR)
export MPLBACKEND := Agg
NBGRADER := $(VENV)/bin/nbgrader
ASSIGNMENTS := attention_surgeon attention_surgeon_bonus
# make autograde: STUDENT=alice[,bob] and/or ASSIGNMENT=<one of ASSIGNMENTS> grade just those; FORCE=1 grades
# again what is unchanged since it was graded. make regrade CHECK=<check name>.
# They count only on make's command line: a shell variable of the same name is ignored.
$(foreach v,STUDENT ASSIGNMENT FORCE CHECK,$(if $(filter environment%,$(origin $(v))),$(eval $(v) :=)))
# The torch build in .venv: TORCH=cpu (the default: PyTorch's CPU-only wheel, for a grader without a
# GPU) or TORCH=cuda (PyPI's build, with several GB of NVIDIA libraries, for a CUDA host), e.g.
# `rm -rf .venv && make venv TORCH=cuda`. requirements.lock pins the version either way.
TORCH ?= cpu
TORCH_VERSION := 2.13.0
TORCH_cpu := torch==$(TORCH_VERSION)+cpu --extra-index-url https://download.pytorch.org/whl/cpu
TORCH_cuda := torch==$(TORCH_VERSION)

.PHONY: help venv hub release validate collect autograde regrade autograde-gpu feedback export report test gpu-check lab clean-grading
.DEFAULT_GOAL := help

help: ## this list (plain `make` prints it too)
	@echo "The Attention Surgeon: make <target>   (README.md has the details)"
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/^([a-z-]+):.*## (.*)/  \1\t\2/' | expand -t 18

# .venv from pinned versions, made on first use; remade when the lock changes.
venv: $(VENV)/.installed ## make .venv from requirements.lock (every other target does it first)
$(VENV)/.installed: requirements.lock
	@test -n "$(TORCH_$(TORCH))" || { echo "TORCH must be cpu or cuda, not '$(TORCH)'"; exit 2; }
	$(PYTHON) -m venv $(VENV)
	@# torch first, alone and without its dependencies (the lock pins them): only this looks at its index
	$(VENV)/bin/pip install --quiet --disable-pip-version-check --no-deps $(TORCH_$(TORCH))
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements.lock
	$(PY) -c "import torch; assert torch.__version__.split('+')[0] == '$(TORCH_VERSION)', torch.__version__; \
	  assert ('$(TORCH)' == 'cuda') == (torch.version.cuda is not None), 'wanted the $(TORCH) build, got ' + torch.__version__"
	touch $@

# Instructor: release/ (student notebooks) and solutions/ from source/, then the leak check; run by the
# course folder's owner (the grader), it also prepares this host's grading (.grading/templates/).
release: venv ## instructor: release/ and solutions/ from source/, then the leak check
	$(PY) -m autograder.release

# Student: the public tests of one notebook, e.g. make validate NB=release/attention_surgeon/01_attention_from_scratch.ipynb
validate: venv ## student: public tests of NB=path/to/notebook.ipynb; fails when one fails
	@test -n "$(NB)" || { echo "usage: make validate NB=path/to/notebook.ipynb"; exit 2; }
	$(PY) -m autograder.validate "$(NB)"

# Grader on the hub: nbgrader collect for both assignments, through the course's own collect step
# (autograder/collect.py: no link followed, no folder in another account's name).
collect: venv ## grader: nbgrader collect for every assignment (links refused, names checked)
	@for a in $(ASSIGNMENTS); do $(NBGRADER) collect $$a || exit $$?; done

# Grader: every submission under submitted/<student>/<assignment>/ -> gradebook, autograded/, feedback/, grades.csv
# (a submission graded before, unchanged since, by the same checks, is not graded again unless FORCE=1).
autograde: venv ## grader: submitted/ -> gradebook, feedback/, grades.csv (STUDENT=, ASSIGNMENT=, FORCE=1)
	$(PY) -m autograder.autograde --student "$(STUDENT)" --assignment "$(ASSIGNMENT)" $(if $(filter 1 yes true,$(FORCE)),--force)

# Grader, after fixing a check: decide that one check again for every graded submission (no notebook runs).
regrade: venv ## grader: CHECK=<name> decided again for every graded submission; nothing else changes
	$(PY) -m autograder.regrade "$(CHECK)"

# Grader on a CUDA host: decide the GPU checks an earlier autograde left pending (nothing else).
autograde-gpu: venv ## grader on a CUDA host: decide the GPU checks left pending
	$(PY) -m autograder.fill_gpu_checks

feedback: venv ## grader: feedback/ again from autograded/ (after manual grading)
	$(PY) -m autograder.feedback

export: venv ## grader: grades.csv from the gradebook
	$(NBGRADER) export --to=grades.csv

# Instructor, after a batch: what the class got wrong, what waits for a TA, which submissions look alike.
report: venv ## instructor: report/index.html (+ checks.csv, similarity.csv) from the gradebook and autograded/
	$(PY) -m autograder.report

test: venv ## developer: the whole test suite
	$(PY) -m pytest

gpu-check: venv ## CUDA host: the GPU-tagged checks against the reference solution
	$(PY) -m autograder.gpu_check

# Try the course on a JupyterHub on this machine (root): hub/setup.sh, then the hub on 127.0.0.1:8000.
hub: ## try the course on a JupyterHub here (as root; hub/README in README.md)
	HUB_STUDENTS="$${HUB_STUDENTS:-student1 student2 student3}" \
	  HUB_GRADER_PASSWORD="$${HUB_GRADER_PASSWORD:-grader-attention-surgeon}" bash hub/setup.sh
	bash hub/start.sh

lab: venv ## JupyterLab in this folder
	$(VENV)/bin/jupyter lab

clean-grading: ## remove autograded/, feedback/, grades.csv, gradebook.db and .grading/
	rm -rf autograded feedback grades.csv gradebook.db .grading
