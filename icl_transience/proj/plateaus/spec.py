"""The registry entries of the plateau tasks of Fu et al.: the hidden-factor
task and the authors' frozen-embedding task (tasks.TaskSpec)."""
from icl_transience import tasks
from icl_transience.nn import transformer
from icl_transience.proj.plateaus import authors_task
from icl_transience.proj.plateaus import config_blocks
from icl_transience.proj.plateaus import report
from icl_transience.proj.plateaus import task

# Fu et al.: ICL accuracy, and the weights and context components' probes.
CURVES = (
    tasks.Curve("icl", "acc", "ICL accuracy", "tab:blue"),
    tasks.Curve("weights_probe", "a", "weights component (probe a)", "tab:red"),
    tasks.Curve("context_probe", "acc", "context component (probe)",
                "tab:green"),
)
AUTHORS_CURVES = (
    tasks.Curve("icl", "acc", "ICL accuracy", "tab:blue"),
    tasks.Curve("weights_probe", "pass", "weights component (probe pass)",
                "tab:red"),
)
EMBEDDER = ("read_in", "input_proj", "label_embed", "positions")

PLATEAU = tasks.TaskSpec(
    build=task.PlateauTask, blocks=config_blocks.blocks,
    l2_groups=transformer.l2_groups(*EMBEDDER), curves=lambda c: CURVES,
    report=report.report)
AUTHORS = tasks.TaskSpec(
    build=authors_task.AuthorsPlateauTask, blocks=config_blocks.authors_blocks,
    l2_groups=transformer.l2_groups(*EMBEDDER), curves=lambda c: AUTHORS_CURVES,
    report=report.report)
