"""Compressor: layer pruning at init, training, channel shrinking, and the pipeline.

The stages as library calls (the README's "Python" section runs them end to end):

    spec = compressor.ModelSpec(model="resnet20", kwargs={"num_classes": 10})
    dense = compressor.build_model(spec)
    ticket, pruned = compressor.prune_at_init(dense, spec, images, labels, config)
    compressor.train(ticket, data, compressor.TrainConfig(epochs=3), "out/ticket")

or every stage of a recipe: `compressor.run_pipeline(compressor.load_recipe(path), "out")`.
Each name is imported on first use, so `import compressor` loads no torch until a model
is asked for, and the command line starts at once.
"""

from deploy.lazy import lazy_attributes

__version__ = "0.1.0"

# {module: public names}: stage by stage, in the order the pipeline runs them.
_API = {
    "compressor.errors": (
        "CompressorError",
        "ConfigError",
        "InputError",
        "TrainingError",
        "UnsupportedModelError",
    ),
    "compressor.models.zoo": ("create_model", "list_models", "register_model"),
    "compressor.models.spec": ("ModelSpec", "build_model"),
    "compressor.models.store": ("StoredModel", "load_model", "save_model"),
    "compressor.data.config": ("AugmentConfig", "DataConfig"),
    "compressor.data.splits": ("DataSplits", "Split", "load_data"),
    "compressor.prune.registry": ("CRITERIA", "register_criterion"),
    "compressor.prune.layers": (
        "LayerPruneConfig",
        "LayerPruneResult",
        "prune_after_training",
        "prune_at_init",
        "scoring_batch",
    ),
    "compressor.prune.shrink": (
        "ShrinkConfig",
        "ShrinkResult",
        "count_macs_params",
        "shrink_channels_",
    ),
    "compressor.training.config": ("TrainConfig", "TrainResult"),
    "compressor.training.loop": ("train",),
    "compressor.training.evaluate": ("evaluate",),
    "compressor.recipe.sections": ("Recipe", "load_recipe", "recipe_from_dict"),
    "compressor.workflows.pipeline": ("PipelineResult", "run_pipeline"),
}
__all__ = sorted(name for names in _API.values() for name in names)
__getattr__, __dir__ = lazy_attributes(__name__, _API)
del lazy_attributes  # the helper is not part of the API
