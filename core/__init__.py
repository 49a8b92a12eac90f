"""Fine-tune a chat model into a roleplay chatbot: data, formatting, training loop, checkpoints."""
