"""stmap.train: reproduce Smart Transfer — datasets, losses, LoRA, protocols, reports."""
