"""The backbone-independent training loop: the rollout stack, the GRPO step, batches, evaluation.

    loop = TrainingLoop(cfg, run_dir)
    await loop.run()                      # train (resuming from run_dir's checkpoints), return 0

    await run_evaluation(cfg, run_dir)    # `trainer_common.val_only`: evaluate and write eval.json

`ajet.backbone.debug` runs these in one process; the verl backbone reuses the user-code and
rollout pieces inside verl's workers.
"""

from ajet.training.batch import TrainingBatch, build_training_batch
from ajet.training.evaluate import evaluate, run_evaluation, write_eval_report
from ajet.training.loop import TrainingLoop
from ajet.training.stack import RolloutStack, build_rollout_stack
from ajet.training.user_code import build_workflow_and_judge, resolve_user_classes

__all__ = [
    "RolloutStack",
    "TrainingBatch",
    "TrainingLoop",
    "build_rollout_stack",
    "build_training_batch",
    "build_workflow_and_judge",
    "evaluate",
    "resolve_user_classes",
    "run_evaluation",
    "write_eval_report",
]
