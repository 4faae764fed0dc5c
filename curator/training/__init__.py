"""Fine-tuning, LoRA, evaluation and saving what was trained."""
