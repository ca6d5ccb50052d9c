# The Attention Surgeon: every command a user runs. See README.md.
#   instructor: make release          student: make validate NB=...
#   grader:     make autograde / make feedback / make export
#   developer:  make test             CUDA host: make gpu-check
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# nbgrader runs `alembic` as a subprocess: the venv's bin must be on PATH.
# nbgrader reads nbgrader_config.py in this directory, which includes course_config.py.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export PYTHONPATH := $(CURDIR)
export MPLBACKEND := Agg
NBGRADER := $(VENV)/bin/nbgrader
ASSIGNMENT := attention_surgeon

.PHONY: venv release validate autograde autograde-gpu feedback export test gpu-check lab clean-grading

# .venv from pinned versions, made on first use; remade when the lock changes.
venv: $(VENV)/.installed
$(VENV)/.installed: requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements.lock
	$(PY) -c "import torch; assert torch.__version__.split('+')[0] == '2.13.0', torch.__version__"
	touch $@

# Instructor: release/ (student notebooks) and solutions/ from source/, then the leak check.
release: venv
	$(PY) -m autograder.release

# Student: the public tests of one notebook, e.g. make validate NB=release/attention_surgeon/01_attention_from_scratch.ipynb
validate: venv
	@test -n "$(NB)" || { echo "usage: make validate NB=path/to/notebook.ipynb"; exit 2; }
	$(NBGRADER) validate "$(NB)"

# Grader: every submission under submitted/<student>/$(ASSIGNMENT)/ -> gradebook, autograded/, feedback/, grades.csv
autograde: venv
	$(PY) -m autograder.grade_submissions

# Grader on a CUDA host: decide the GPU checks an earlier autograde left pending (nothing else).
autograde-gpu: venv
	$(PY) -m autograder.fill_gpu_checks

feedback: venv
	$(NBGRADER) generate_feedback $(ASSIGNMENT) --force

export: venv
	$(NBGRADER) export --to=grades.csv

test: venv
	$(PY) -m pytest

gpu-check: venv
	$(PY) -m autograder.gpu_check

lab: venv
	$(VENV)/bin/jupyter lab

clean-grading:
	rm -rf autograded feedback grades.csv gradebook.db .grading
