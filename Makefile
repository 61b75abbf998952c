# Developer shortcuts. The test venv (.venv) is created by scripts/test.sh.
VENV ?= .venv

.PHONY: lint test install module

lint:
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/mypy --strict tests scripts/config_reference.py
	$(MAKE) -s -C pam_module format-check

test:
	bash scripts/test.sh

install:
	bash scripts/install.sh

module:
	$(MAKE) -C pam_module
