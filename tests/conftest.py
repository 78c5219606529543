"""Shared test set-up: this folder is on sys.path (pytest's default import mode puts a root
conftest's folder there), so every test imports the table builders as ``from builders import``."""
