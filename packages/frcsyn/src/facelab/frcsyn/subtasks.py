"""The FRCSyn sub-tasks (2nd edition, CVPR 2024, and the 2nd FRCSyn-onGoing) as data.

Two tasks, three training regimes each:

* task 1, demographic bias mitigation, ranked by ``TO = AVG - SD`` of the verification
  accuracy across demographic groups (BUPT-BalancedFace's eight groups in the challenge);
* task 2, overall performance (age, pose, expression, occlusion), ranked by ``AVG``, the mean
  verification accuracy over the evaluation datasets.

* ``x.1``: synthetic data only, at most 500,000 images;
* ``x.2``: synthetic data only, no limit;
* ``x.3``: the challenge's real CASIA-WebFace (about 500k images) plus at most 500,000
  synthetic images, combined freely.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from facelab.core.errors import UnknownNameError

#: the synthetic-image budget of sub-tasks x.1 and x.3
SYNTHETIC_LIMIT = 500_000
#: CASIA-WebFace as released (Yi et al. 2014): the real part allowed in sub-tasks x.3. The
#: insightface copy (faces_webface_112x112) holds 490,623 images of 10,572 people.
CASIA_WEBFACE_IMAGES = 494_414
CASIA_WEBFACE_IDENTITIES = 10_575

Ranking = Literal["TO", "AVG"]


@dataclass(frozen=True)
class SubTask:
    """One FRCSyn sub-task: which task it belongs to and what training data it allows."""

    id: str
    task: int
    title: str
    synthetic_limit: int | None  # None: unlimited
    real_allowed: bool  # True: CASIA-WebFace may be added (sub-tasks x.3)

    @property
    def ranking(self) -> Ranking:
        """The leaderboard's ranking column: TO for task 1, AVG for task 2."""
        return "TO" if self.task == 1 else "AVG"

    @property
    def rule(self) -> str:
        """The data rule in one sentence."""
        limit = "no limit" if self.synthetic_limit is None else f"at most {self.synthetic_limit:,}"
        if self.real_allowed:
            return f"real CASIA-WebFace plus synthetic images ({limit} synthetic images)"
        return f"synthetic images only ({limit})"


_TASK_TITLES = {1: "demographic bias mitigation", 2: "overall performance"}
_REGIMES = {
    1: ("synthetic data, constrained", SYNTHETIC_LIMIT, False),
    2: ("synthetic data, unconstrained", None, False),
    3: ("synthetic + real data, constrained", SYNTHETIC_LIMIT, True),
}

SUBTASKS: dict[str, SubTask] = {
    f"{task}.{k}": SubTask(
        id=f"{task}.{k}",
        task=task,
        title=f"{_TASK_TITLES[task]}: {title}",
        synthetic_limit=limit,
        real_allowed=real,
    )
    for task in (1, 2)
    for k, (title, limit, real) in _REGIMES.items()
}


def get_subtask(subtask: str | SubTask) -> SubTask:
    """A sub-task by its id (``"1.1"`` ... ``"2.3"``)."""
    if isinstance(subtask, SubTask):
        return subtask
    key = str(subtask).strip()
    if key not in SUBTASKS:
        raise UnknownNameError(f"subtask: expected one of {sorted(SUBTASKS)}, got {subtask!r}")
    return SUBTASKS[key]
