"""Image encoders and the feature cache the decoders train on."""
