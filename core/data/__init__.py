"""The data side: files -> records -> token sequences with trained-token masks -> batches.

It knows the tokenizer and its chat template, never the model.
"""
