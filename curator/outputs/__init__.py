"""Outputs: the files a selection leaves for fine-tuning.

- ``mask_files``: parameter masks as safetensors (bool per parameter), their density by
  layer and module kind, the app's heatmap read from a file checked against its sha256;
- ``subsets``: a selection written out (formats, its mask, a manifest), verified and read
  back (``export_selection``, ``verify_export``, ``load_export``).

The members sit on different layers (docs/architecture.md): mask files below the stages
(which write them), subsets above them. This file runs whenever either is imported, so it
imports nothing; import from the submodules.
"""
