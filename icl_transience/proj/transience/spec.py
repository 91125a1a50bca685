"""The registry entries of the sequence-classification tasks: the fixed-feature
classifier of the transience and coopetition papers (Singh et al. 2023, 2025),
the Omniglot image task of Chan et al. 2022 and the ICL-only task of the
induction-head paper (Singh et al. 2024) (tasks.TaskSpec)."""
from icl_transience import tasks
from icl_transience.nn import transformer
from icl_transience.proj.transience import classifier_config
from icl_transience.proj.transience import task
from icl_transience.proj.transience.induction_heads import report as ih_report
from icl_transience.proj.transience.induction_heads import task as ih_task
from icl_transience.proj.transience.omniglot import task as omniglot_task

# Singh et al. 2025, Figure 1b (and our pairs eval, drawn when a run has it).
CLASSIFIER_CURVES = (
    tasks.Curve("train_eval", "in_context_acc", "Train", "black"),
    tasks.Curve("icl", "in_context_acc", "ICL eval", "tab:blue"),
    tasks.Curve("flip_icl", "in_context_acc", "Flip eval", "tab:purple"),
    tasks.Curve("pairs_icl", "in_context_acc", "Pairs eval (trained labels)",
                "tab:green"),
    tasks.Curve("iwl_copy_avail", "in_context_acc", "CIWL eval", "tab:orange"),
    # its in-context accuracy is 0 by construction
    tasks.Curve("pure_iwl", "acc", "IWL eval* (full-vocabulary acc)", "tab:red"),
)


def omniglot_curves(c) -> tuple:
  """Chan et al. 2022's evaluators: few-shot on holdout classes (ICL), no
  support on trained ones (IWL). accuracy_closed (among the context's
  labels) has chance 1 / ways; accuracy_query (over every label) about 0."""
  ways = 1.0 / c.omniglot.ways
  return (
      tasks.Curve("fewshot_holdout", "accuracy_closed", "Few-shot holdout (ICL)",
                  "tab:blue", ways),
      tasks.Curve("fewshot_zipfian", "accuracy_closed", "Few-shot Zipfian",
                  "tab:green", ways),
      tasks.Curve("no_support_zipfian", "accuracy_query", "No support (IWL)",
                  "tab:red", 0.0),
      tasks.Curve("no_support_rare", "accuracy_query", "No support, rare",
                  "tab:orange", 0.0),
      tasks.Curve("no_support_common", "accuracy_query", "No support, common",
                  "tab:brown", 0.0))


def successor(c):
  """Configs written when the Omniglot images were this task with
  data.source='omniglot' now run as the omniglot task."""
  return "omniglot" if c.get("data", {}).get("source") == "omniglot" else None


CLASSIFY = tasks.TaskSpec(
    build=task.ClassifyTask, blocks=classifier_config.blocks,
    resumable=("evals.batch_size",),
    l2_groups=transformer.l2_groups("input_proj", "label_embed", "positions"),
    curves=lambda c: CLASSIFIER_CURVES, grafts=True, successor=successor)
OMNIGLOT = tasks.TaskSpec(
    build=omniglot_task.OmniglotTask, blocks=omniglot_task.blocks,
    resumable=("omniglot.eval_batch_size",),
    renamed={"omniglot.evaluators": "evals.names"},
    l2_groups=transformer.l2_groups("embedder", "label_embed"),
    curves=omniglot_curves)
# Singh et al. 2024, Fig. 3a: train, held-out classes, held-out label pairs.
INDUCTION_HEAD_CURVES = (
    tasks.Curve("fsl_train", "loss", "train", "black"),
    tasks.Curve("fsl_test_class", "loss", "test (held-out classes)", "tab:blue"),
    tasks.Curve("fsl_val_rl", "loss", "test (held-out label pairs)", "tab:orange"),
    tasks.Curve("fsl_train_valex", "loss", "held-out exemplars", "tab:green"),
)
INDUCTION_HEADS = tasks.TaskSpec(
    build=ih_task.InductionHeadsTask, blocks=ih_task.blocks,
    l2_groups=transformer.l2_groups("input_proj", "label_embed"),
    curves=lambda c: INDUCTION_HEAD_CURVES, report=ih_report.report, grafts=True,
    renamed={"ih.evaluators": "evals.names"})
