"""Training: the loops (pretraining, heads, fine-tuning, evaluation), the tiny base's
pretraining and the fine-tuning of Hugging Face CLIP on one task."""
