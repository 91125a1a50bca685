"""The registry entries of the recall tasks: associative recall over
interleaved linear dynamical systems (Daniels et al. 2025) and its dictionary
stand-in (tasks.TaskSpec)."""
from icl_transience import tasks
from icl_transience.nn import transformer
from icl_transience.proj.lds_recall import report
from icl_transience.proj.lds_recall import task
from icl_transience.proj.lds_recall.dictionary import report as dictionary_report
from icl_transience.proj.lds_recall.dictionary import task as dictionary_task


def lds_curves(c) -> tuple:
  """The pretraining error, then each needle evaluator's median error at
  each token after the final label (token 1 needs recall; later ones only
  continuation, Daniels et al. 2025, Fig. 2)."""
  needles = [tasks.Curve(name, f"after_final_{k}_median",
                         f"{name}: token {k} after the final label")
             for name in task.needle_evaluators(c) for k in c.lds.final_steps]
  return (tasks.Curve("pretrain_test", "mse", "pretraining test error"),
          *needles)


DICTIONARY_CURVES = (
    tasks.Curve("first_token", "acc", "first token (recall)", "tab:blue"),
    tasks.Curve("second_token", "acc", "second token (continuation)",
                "tab:orange"),
    tasks.Curve("misdirected", "first_follows_label",
                "misdirected: first token follows the label", "tab:red"),
)

LDS = tasks.TaskSpec(
    build=task.LDSTask, blocks=task.blocks, resumable=("lds.eval_batch",),
    l2_groups=transformer.l2_groups("read_in", "positions"),
    curves=lds_curves, report=report.report)
DICTIONARY = tasks.TaskSpec(
    build=dictionary_task.DictionaryTask, blocks=dictionary_task.blocks,
    l2_groups=transformer.l2_groups("embed", "positions"),
    curves=lambda c: DICTIONARY_CURVES, report=dictionary_report.report)
