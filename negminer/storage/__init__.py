"""Reading and validating inputs, dataset versions, the embedding store."""
