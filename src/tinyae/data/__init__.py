"""Data: images, latent files, latent conventions and metrics. Imports tinyae.nets and tinyae.io."""
