"""The configuration file: its model, its parser, the sync presets."""
