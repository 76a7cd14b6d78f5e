"""Charts over a capture (Altair), for notebooks and reports; `show` imports only the layers before it."""

from .charts import (MAX_ROWS, compaction, key_chain, ops_by_resource, revision_timeline, save, sql_latency,
                     table_anatomy, watch_lag)

__all__ = ["MAX_ROWS", "compaction", "key_chain", "ops_by_resource", "revision_timeline", "save", "sql_latency",
           "table_anatomy", "watch_lag"]
