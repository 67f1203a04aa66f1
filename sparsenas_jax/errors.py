"""Errors that the command line reports as one line, without a traceback."""


class ConfigError(ValueError):
  """A config field has a value the job cannot use; the message names the fix."""
