"""Every ``data.source``, by name: a new source is one file (a `Source` subclass) and one line here, plus
its name in `sage.specs.DataSource` (the config's type; checked against this table when it is imported).

Kept apart from ``sage/sources/__init__.py`` because DAgger's rounds live with the teacher code
(`sage.teacher.dagger`), which imports `sage.sources.base`.
"""

from __future__ import annotations

from sage.sources.base import Source
from sage.sources.expert import ExpertWalkthroughs
from sage.sources.on_policy import OnPolicy
from sage.sources.teacher_play import TeacherPlay
from sage.sources.teacher_pool import TeacherPoolDraws
from sage.specs import DATA_SOURCES, TeacherPoolSpec, check_choice
from sage.teacher.dagger import DaggerRounds

SOURCES: dict[str, type[Source]] = {
    "on_policy": OnPolicy,
    "expert": ExpertWalkthroughs,
    "teacher": TeacherPlay,
    "dagger": DaggerRounds,
}

if tuple(SOURCES) != DATA_SOURCES:  # a developer's slip, caught on the first import
    raise RuntimeError(f"sage.specs.DataSource {list(DATA_SOURCES)} and sage.sources.registry.SOURCES {list(SOURCES)} "
                    "must name the same sources, in the same order")


def make_source(name: str, teacher_pool: TeacherPoolSpec | None = None) -> Source:
    """The source ``data.source=name`` names; ``data.teacher_pool`` turns ``teacher`` into draws from the pool."""
    check_choice("data.source", name, tuple(SOURCES))
    if name == "teacher" and teacher_pool is not None:
        return TeacherPoolDraws()
    return SOURCES[name]()
