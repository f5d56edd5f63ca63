"""The ways a study's library code ends a command, as exceptions: the command turns each into its line and exit code."""


class Refusal(ValueError):
    """Input the user can fix (a flag, a study file, data, a folder, a cluster): one line, exit code 2."""
