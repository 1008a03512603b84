"""Integrations with other libraries: diffusers pipelines and their live previews."""
