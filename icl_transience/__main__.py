"""Lists the suite's programs, one line each with an example:
python -m icl_transience.

The list is read from the package itself (every module with a `main()` run
under `if __name__ == "__main__"`), without importing any of them.
"""
import ast
import os

PACKAGE = os.path.dirname(os.path.abspath(__file__))
TRAIN = ("python main.py --config=configs/<config>.py --workdir=DIR",
         "trains (or resumes) a run; --help lists its flags",
         "python main.py --config=configs/coopetition.py --workdir=runs/coop")


def _is_program(tree: ast.Module) -> bool:
  has_main = any(isinstance(n, ast.FunctionDef) and n.name == "main"
                 for n in tree.body)
  guarded = any(isinstance(n, ast.If) and "__main__" in ast.unparse(n.test)
                for n in tree.body)
  return has_main and guarded


def tools() -> list[str]:
  """Dotted names (under icl_transience.) of the modules that are programs."""
  found = []
  for folder, _, files in os.walk(PACKAGE):
    for name in files:
      if not name.endswith(".py") or name == "__main__.py":
        continue
      path = os.path.join(folder, name)
      with open(path, encoding="utf-8") as f:
        if _is_program(ast.parse(f.read())):
          found.append(os.path.relpath(path, PACKAGE)[:-3].replace(os.sep, "."))
  return sorted(found, key=lambda m: (m.count("."), m))


def describe(module: str) -> tuple[str, str, str]:
  """(command, the docstring's first sentence, its first example line)."""
  path = os.path.join(PACKAGE, *module.split(".")) + ".py"
  with open(path, encoding="utf-8") as f:
    doc = ast.get_docstring(ast.parse(f.read())) or ""
  what = doc.split("\n\n")[0].replace("\n", " ").rstrip(".")
  command = f"python -m icl_transience.{module}"
  lines = [line.strip() for line in doc.splitlines()]
  example = f"{command} --help"
  for i, line in enumerate(lines):
    if line.startswith(command):  # the first example, its continuations joined
      example = line
      while example.endswith("\\") and i + 1 < len(lines):
        i += 1
        example = example[:-1].rstrip() + " " + lines[i]
      break
  example = " ".join(example.split("#")[0].split())
  return command, what, example


def main():
  for command, what, example in [TRAIN] + [describe(m) for m in tools()]:
    print(f"{command}\n    {what}\n    e.g. {example}")
  print("\nEach takes --help; project tools live under icl_transience/proj/<paper>/.")


if __name__ == "__main__":
  main()
