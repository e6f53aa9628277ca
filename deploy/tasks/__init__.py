"""invoke task modules, one per namespace; tasks parse flags and call the engine."""

import sys

# invoke turns bytecode writing off for every command unless given --write-pyc (so a loose
# tasks.py leaves no __pycache__ behind); the engine is a package, and compiling its modules from
# source again on every command is most of a warm command's own CPU time. The interpreter's own
# setting (-B, PYTHONDONTWRITEBYTECODE) still holds.
sys.dont_write_bytecode = bool(sys.flags.dont_write_bytecode)
