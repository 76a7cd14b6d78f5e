"""Charts over a capture (Altair), replays of recorded runs, and live control panels, for notebooks and
reports; `show` imports only the layers before it."""

from .charts import (
                     MAX_ROWS,
                     apiserver_availability,
                     compaction,
                     key_chain,
                     ops_by_resource,
                     revision_timeline,
                     save,
                     sql_latency,
                     table_anatomy,
                     watch_lag,
                     watch_lag_timeline,
)

__all__ = ["MAX_ROWS", "apiserver_availability", "compaction", "key_chain", "ops_by_resource", "revision_timeline",
           "save", "sql_latency", "table_anatomy", "watch_lag", "watch_lag_timeline"]
