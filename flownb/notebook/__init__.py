"""Notebook experience: rich display, MappingEditor, FlowBuilder, Monitor (imports pandas/ipywidgets)."""
