"""Where an epoch's training episodes come from (``data.source``): one small class per source, each in its
own file, registered by name in `sage.sources.registry` (DAgger's rounds live with the teacher code,
`sage.teacher.dagger`). The DataModule builds the named one and asks it for each epoch's episodes."""

from sage.sources.base import Source, SourceContext

__all__ = ["Source", "SourceContext"]
