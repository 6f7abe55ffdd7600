"""tdfusion: task-driven multi-modal image fusion with a meta-learned fusion loss."""
__version__ = "0.1.0"
