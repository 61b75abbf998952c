# Developer shortcuts. The test venv (.venv) is created by scripts/test.sh.
VENV ?= .venv

.PHONY: lint test install module deb

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

# The Debian package, built in a copy of the tree: build/deb/pam-mfa_*.deb.
deb:
	bash scripts/build-deb.sh
