"""The one exception type for bad user input.

Raise ``UserError("corpus file runs/x.txt: is empty")`` for anything the user can fix (a missing
file, a bad option, a corrupt checkpoint). The CLI prints its message as one line and exits with
code 2; any other exception is a bug and keeps its traceback.
"""


class UserError(Exception):
    """Bad input: a message naming the file/option and what was wrong."""
