"""Charts over a capture (Altair), replays of recorded runs, and live control panels, for notebooks and
reports; `show` imports only the layers before it.

Importing it makes Altair draw charts offline (`charts.use_offline_renderer`), unless a renderer other than
Altair's default was chosen before, which is then left as it is."""

import altair as _alt

from .charts import (
    MAX_ROWS,
    apiserver_availability,
    compaction,
    key_chain,
    mimebundle,
    ops_by_resource,
    revision_timeline,
    save,
    sql_latency,
    table_anatomy,
    use_offline_renderer,
    watch_lag,
    watch_lag_timeline,
)

if _alt.renderers.active == "default":
    use_offline_renderer()

__all__ = ["MAX_ROWS", "apiserver_availability", "compaction", "key_chain", "mimebundle", "ops_by_resource",
           "revision_timeline", "save", "sql_latency", "table_anatomy", "use_offline_renderer", "watch_lag",
           "watch_lag_timeline"]
