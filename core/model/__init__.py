"""The model side: loading, every change to the stock model (prepare.py and patches/), adapters, generation."""
