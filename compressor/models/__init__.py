"""Models: the zoo, models from any factory, the architecture spec, the model store, pretrained
weights, input channels."""
