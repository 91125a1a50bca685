"""User-facing errors: one clear line, never a traceback."""
import functools
import sys


class UserError(Exception):
  """A mistake in a config, a flag or a file the user handed us."""


def check(ok: bool, field: str, message: str):
  """Raises UserError 'field: message' unless ok."""
  if not ok:
    raise UserError(f"{field}: {message}")


def renamed(validate, prefix: str, new_prefix: str):
  """Runs validate(); a UserError naming a `prefix` field is raised again
  naming it as a `new_prefix` field (a data spec's fields as config fields)."""
  try:
    validate()
  except UserError as e:
    raise UserError(new_prefix + str(e).removeprefix(prefix)) from e


class Diverged(UserError):
  """Every member of a run diverged: the run stopped (one line, exit 2)."""


def exit_on_user_error(fn):
  """Runs fn; a UserError becomes one line on stderr and exit status 2."""

  @functools.wraps(fn)
  def wrapped(*args, **kwargs):
    try:
      return fn(*args, **kwargs)
    except UserError as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(2)

  return wrapped
