"""The tasks the engine serves, by `--task_type`. A task builds its model and loaders, computes
the loss of a training step and evaluates; `modules/engine.py` does everything else."""
import importlib

# --task_type -> "module:class"; imported on use, so one task never loads the other's code.
TASKS = {"retrieval": "modules.tasks.retrieval:RetrievalTask",
         "recognition": "modules.tasks.recognition:RecognitionTask"}
TASK_TYPES = tuple(TASKS)


def build_task(args):
    module, name = TASKS[args.task_type].split(":")
    return getattr(importlib.import_module(module), name)(args)
