"""The one exception type users see: a one-line message naming the file or tensor and what to do."""


class ConversionError(Exception):
  """Bad input or a refused operation; the CLI prints it as a single line and exits 2."""
