"""Applications beside the research CLI: tools a user runs on their own videos. They import the
library (modules/, dataloaders/) and never the training script."""
