"""One exception type for every user-facing problem: the CLI prints it as a single line."""


class AutopruneError(Exception):
    """A problem with the user's input (model, data, target, file); the message says what to do."""
