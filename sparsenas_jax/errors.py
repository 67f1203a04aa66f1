"""Errors that the command line reports as one line, without a traceback."""


class ConfigError(ValueError):
  """A config field has a value the job cannot use; the message names the fix."""


class DivergenceError(RuntimeError):
  """A step produced a non-finite loss, gradient or parameter; the message
  names the step, the quantities and the config fields to lower."""
