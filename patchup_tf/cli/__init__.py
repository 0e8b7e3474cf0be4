"""The command-line programs (`patchup-train`, `patchup-evaluate`, ...).

Each module has a `main(argv=None) -> int`; `setup.py` installs them as
console scripts and `scripts/<name>.py` are thin wrappers of the same.
"""
