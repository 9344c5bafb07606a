"""Running featpipe's jobs as several processes under ``torchrun`` (or as a job array).

``ranks`` knows who this process is and holds the process group used for control;
``progress`` reports long work as a bar on a terminal and as plain lines in a batch log.
"""

from featpipe.distributed.progress import LineProgress, progress_bar
from featpipe.distributed.ranks import (
    Ranks,
    current_ranks,
    process_group,
    refuse_other_settings,
    under_torchrun,
)

__all__ = [
    "LineProgress",
    "Ranks",
    "current_ranks",
    "process_group",
    "progress_bar",
    "refuse_other_settings",
    "under_torchrun",
]
