"""Tasks: what differs between segmentation, translation and classification, behind one object.

The engine (training loop, resume, processes, precision, run folders, `fusescope eval`) is one;
a `Task` supplies its data sets, model, loss and evaluation. A task lives in a module or package
of this package (by convention the package `fusescope.tasks.<name>`, with what only it has
beside it: its loss, metrics, protocols) and registers itself there (`register_task`); `task_of`
imports that module on first use (every module of the package when the name is not a
module's), so this package imports nothing of the engine and any engine module may import it.
"""

from fusescope.tasks.base import TASKS, Task, known_tasks, register_task, task_of

__all__ = ["TASKS", "Task", "known_tasks", "register_task", "task_of"]
