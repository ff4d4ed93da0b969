"""The projector side: the consumer loop, read models, the committed-topic publisher, rebuilds."""
