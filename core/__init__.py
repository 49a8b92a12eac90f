"""Fine-tune a chat model into a roleplay chatbot: data, formatting, training loop, checkpoints."""

import os

# PyTorch's CPU allocator backs large tensors with transparent huge pages when this is set, so each
# step's activations fault in as 2 MB pages rather than 4 KB ones (far fewer page faults). PyTorch
# reads it once, at its first allocation, so `core` must be imported before torch for it to apply.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
