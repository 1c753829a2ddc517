"""alignkit: align models with human preferences.

The core (``alignkit.losses``, ``alignkit.data``) imports only torch and the standard
library; the web app, Ray and gymnasium are optional extras imported where used.
"""

from alignkit.errors import AlignkitError, ConfigError, DataError

__version__ = "0.1.0"
__all__ = ["AlignkitError", "ConfigError", "DataError", "__version__"]
