"""Tasks: what differs between segmentation, translation and classification, behind one object.

The engine (training loop, resume, processes, precision, run folders, `fusescope eval`) is one;
a `Task` supplies its data sets, model, loss and evaluation. A task lives in the module
`fusescope.tasks.<name>` and registers itself there; `task_of` imports that module on first use,
so this package imports nothing of the engine and any engine module may import it.
"""

from fusescope.tasks.base import TASK_NAMES, Task, task_of

__all__ = ["TASK_NAMES", "Task", "task_of"]
