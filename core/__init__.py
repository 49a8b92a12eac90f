"""Fine-tune a chat model into a roleplay chatbot: data, model preparation, training loop, checkpoints.

Importing any module of this package changes nothing outside it (no environment variables, no
registries); `core.train.run_setup.setup` and `core.model.prepare.prepare_model` make the changes a run needs.
"""
