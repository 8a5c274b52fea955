"""The fine-tuning wizard: base model -> dataset -> settings -> train -> evaluate -> export, then chat with it.

Training runs in its own child process (training.runner.TrainingRun, polled by a timer); the dataset report,
evaluation and exports run in a child too (app.jobs, training.tasks): the GUI process loads neither torch nor
llama.cpp. One module per page; `shell` holds the QWizard and the state the pages share; the cost model and the
presets are Qt-free in training.estimate and training.presets.
"""

from app.wizard.shell import FineTuneWizard

__all__ = ["FineTuneWizard"]
