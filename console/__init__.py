"""The federation console: read-only web pages over a coordinator's or a site's files."""
