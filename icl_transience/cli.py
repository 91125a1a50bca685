"""Command-line plumbing shared by main.py and the `python -m` tools."""
import sys

import logging as py_logging

from absl import flags
from absl import logging

from icl_transience.errors import UserError, exit_on_user_error  # pylint: disable=unused-import


def parse_flags(argv):
  """absl flag parsing with one-line errors for bad flags and config files.

  ml_collections raises raw exceptions for a missing config file or a
  misspelled --config.field (the file loads lazily, so load it here); turn
  those into one line and exit status 2.
  """
  try:
    rest = flags.FLAGS(argv)
    if "config" in flags.FLAGS:
      flags.FLAGS["config"].value.keys()  # the file loads lazily: load it now
    return rest
  except UserError as e:  # a config file's own one-line error (a variant)
    message = f"--config: {e}"
  except flags.Error as e:  # a config file that raised: keep its last line
    lines = [l.strip() for l in str(e).splitlines() if l.strip()]
    message = (f"{lines[0].split(':')[0]}: {lines[-1]}"
               if "Traceback" in str(e) else str(e))
  except (AttributeError, KeyError, TypeError, ValueError, OSError,
          SyntaxError) as e:
    text = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    lines = [l.strip() for l in text.splitlines() if l.strip()]
    if isinstance(e, OSError):  # "...: [Errno 2] No such file...: 'x.py'"
      lines = lines[-1:]
    detail = " ".join(lines[:2]) if lines else type(e).__name__
    message = f"bad --config: {detail}"
  print(f"error: {message}", file=sys.stderr)
  sys.exit(2)


def start_logging():
  """INFO log lines from our code, warnings and errors from the libraries'."""
  logging.set_verbosity(logging.INFO)
  quiet_library_logs()


def quiet_library_logs():
  """Keeps the log readable: Orbax logs every save, JAX every missing backend."""
  def keep(record):
    if "/orbax/" in record.pathname:
      return record.levelno >= py_logging.ERROR
    if record.pathname.endswith("xla_bridge.py"):  # "no TPU backend" at INFO
      return record.levelno >= py_logging.WARNING
    return True
  logging.get_absl_handler().addFilter(keep)
