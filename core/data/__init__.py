"""The data side: files -> records -> token sequences with trained-token masks -> batches. Knows the tokenizer, never the model."""
