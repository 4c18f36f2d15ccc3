"""The one training loop every method hooks into."""
