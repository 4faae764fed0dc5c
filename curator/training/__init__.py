"""Training: fine-tuning on a selection, evaluating the result, saving what was trained.

- ``finetune``: masked and layer-subset (GAST) fine-tuning on the response-token loss
  (``train``, ``apply_mask``);
- ``lora``: LoRA adapters through peft, honouring a GAST layer map (``train_lora``);
- ``evaluate``: per-row losses and exact match (``row_losses``, ``eval_loss``, the one loss
  loop for `curator eval` and training's eval);
- ``trained``: the output folder of `curator train`, written by the folder rule
  (``save_trained``).

Import from the submodules: importing this package loads no model code.
"""
