"""The house: the generic core imports no project, and no project imports
another (imports read from the source, nothing is run)."""
import ast
import os

from helpers import REPO

PACKAGE = os.path.join(REPO, "icl_transience")


def module_imports() -> dict[str, set[str]]:
  """{module: the icl_transience modules or packages it imports}."""
  out = {}
  for folder, _, files in os.walk(PACKAGE):
    for name in files:
      if not name.endswith(".py"):
        continue
      path = os.path.join(folder, name)
      module = os.path.relpath(path[:-3], REPO).replace(os.sep, ".")
      found = set()
      for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
            "icl_transience"):
          found |= {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
          found |= {a.name for a in node.names if a.name.startswith("icl_transience")}
      out[module.removesuffix(".__init__")] = found
  return out


def project_of(module: str) -> str | None:
  parts = module.split(".")
  return parts[2] if len(parts) > 2 and parts[1] == "proj" else None


def test_the_core_imports_no_project_and_projects_import_no_other():
  imports = module_imports()
  assert {"transience", "plateaus", "lds_recall"} <= {
      project_of(m) for m in imports if project_of(m)}
  wrong = {m: sorted(i for i in found if project_of(i) and project_of(i) != project_of(m))
           for m, found in imports.items()}
  assert not {m: v for m, v in wrong.items() if v}
