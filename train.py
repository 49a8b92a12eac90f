"""Fine-tune a chat model into a roleplay chatbot: `python train.py --help` (installed: `roleplay-tuner`)."""

import sys

from core.cli import main

if __name__ == "__main__":
    sys.exit(main())
