"""curator: continual fine-tuning data curation."""

__version__ = "0.1.0"
