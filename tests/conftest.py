"""Shared test set-up: this folder is on sys.path (pytest's default import mode puts a root
conftest's folder there), so every test imports the table builders as ``from builders import``.

Hypothesis runs derandomized by default ("ci" profile), so the suite gives the same verdict on
every clean clone; ``pytest --hypothesis-profile=explore`` draws fresh examples to hunt bugs."""

from hypothesis import settings

settings.register_profile("ci", derandomize=True, database=None)
settings.register_profile("explore", derandomize=False)
settings.load_profile("ci")
