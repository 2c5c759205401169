"""The model: loading (embedded models, Hub, local folders), block layouts, surgery, checkpoints."""
