"""The model: loading (embedded models, Hub, local folders), architecture adapters, surgery, checkpoints."""
