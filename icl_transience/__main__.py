"""Lists the suite's programs, one line each: python -m icl_transience."""
import ast
import importlib.util

TRAIN = ("python main.py --config=configs/<config>.py --workdir=DIR",
         "trains (or resumes) a run")
TOOLS = ("evaluate", "plot", "report", "sweep", "proj.transience.ablate",
         "proj.transience.toy", "proj.lds_recall.prune",
         "proj.lds_recall.hf_checkpoints")


def summary(module: str) -> str:
  """The first paragraph of a module's docstring, read without importing it."""
  path = importlib.util.find_spec(f"icl_transience.{module}").origin
  with open(path, encoding="utf-8") as f:
    doc = ast.get_docstring(ast.parse(f.read())) or ""
  return doc.split("\n\n")[0].replace("\n", " ").rstrip(".")


def main():
  rows = [TRAIN] + [(f"python -m icl_transience.{m}", summary(m)) for m in TOOLS]
  width = max(len(cmd) for cmd, _ in rows)
  for cmd, what in rows:
    print(f"{cmd:<{width}}  {what}")
  print("\nEach takes --help; project tools live under icl_transience/proj/<paper>/.")


if __name__ == "__main__":
  main()
