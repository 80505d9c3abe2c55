"""The one error for a site's settings, whichever file carries them.

A site's settings come from two readers in sibling layers that must not import each other:
the site agent's ``site.toml`` (``deploy.supernode``) and the ClientApp's node config
(``client.site``). The error lives here, beside :class:`~models.data.schema.SchemaError`
and :class:`~models.data.tables.SiteDataError`, because ``models.data`` is the lowest layer
both import and a site's settings say first of all where its data and schema are.
"""

from __future__ import annotations

# The share of a site's examples kept for federated evaluation, unless its settings say.
DEFAULT_VALIDATION_FRACTION = 0.2


class SiteConfigError(ValueError):
    """A site's settings are missing, malformed or point at nothing; the message says which."""
