"""vramwatch: restart the over-budget tenant when a shared GPU or host RAM runs low."""

__version__ = "0.1.0"
