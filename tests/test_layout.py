"""The house: the generic core imports no project, and no project imports
another (imports read from the source, nothing is run)."""
import ast
import os

from helpers import REPO
from icl_transience import config as config_lib
from icl_transience import tasks
from icl_transience.proj.transience import probes

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


def task_config(name: str):
  c = config_lib.base_config()
  c.task = name
  for block, fields in tasks.blocks(c).items():
    c[block] = fields
  return c


def paper_names() -> tuple[set[str], set[str]]:
  """(every registered task's evaluators, its config blocks beyond the
  generic config's)."""
  generic = set(config_lib.base_config())
  evaluators, blocks = set(probes.EVALUATORS), set()
  for name in tasks.TASKS:
    c = task_config(name)
    evaluators |= {curve.evaluator for curve in tasks.curves(c)}
    blocks |= set(tasks.blocks(c)) - generic
  return evaluators, blocks


def test_the_core_names_no_paper_beyond_the_registry():
  """Outside proj/, no string names a paper's evaluator, block or package,
  and no config attribute reads a paper's block; tasks.TASKS (the registry)
  is the one place that names them. 'data' and 'train' are also the mesh
  axis and a TensorBoard tag, so only their use as config blocks counts."""
  evaluators, blocks = paper_names()
  assert {"flip_icl", "pure_iwl", "pretrain_test", "weights_probe"} <= evaluators
  assert {"lds", "omniglot", "plateau", "evals", "data", "train"} <= blocks
  registry = set(tasks.TASKS.values()) | set(tasks.TASKS)
  found = []
  for folder, _, files in os.walk(PACKAGE):
    if "proj" in os.path.relpath(folder, PACKAGE).split(os.sep):
      continue
    for name in (f for f in files if f.endswith(".py")):
      path = os.path.join(folder, name)
      for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
          text = node.value
          if text in registry and name == "tasks.py":
            continue
          if (text in evaluators or text in blocks - {"data", "train"}
              or "icl_transience.proj" in text):
            found.append((path, node.lineno, text))
        elif (isinstance(node, ast.Attribute) and node.attr in blocks
              and isinstance(node.value, ast.Name)
              and node.value.id in ("c", "config", "g", "src")):
          found.append((path, node.lineno, node.attr))
  assert not found
