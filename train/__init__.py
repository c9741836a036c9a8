"""phibox train stage: QLoRA fine-tuning of Phi-3 and merging the adapter."""
