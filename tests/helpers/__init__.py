"""Helpers shared by the training-engine tests (tiny models, subprocess scripts)."""

import os

HELPERS = os.path.dirname(os.path.abspath(__file__))  # scripts the tests start as processes
REPO = os.path.dirname(os.path.dirname(HELPERS))  # the repository's root
