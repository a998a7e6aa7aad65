"""Knowledge bases: assistants, document registry, embedders, vector store and search."""
