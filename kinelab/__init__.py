"""kinelab: see how Kine behaves when several replicas share one database.

The package follows the data's path: provision (datastores, Kine replicas) -> drive (workload)
-> observe (capture) -> analyse (DuckDB SQL). Notebooks import it as ``import kinelab as kl``.
"""

from .analyse.views import open_capture
from .dsn import Dsn
from .errors import KinelabError
from .etcd import Etcd
from .observe.capture import capture
from .provision.lab import Lab
from .provision.tools import KINE_VERSION, install_kine

__version__ = "0.1.0"
__all__ = ["Dsn", "Etcd", "KINE_VERSION", "KinelabError", "Lab", "capture", "install_kine", "open_capture"]
