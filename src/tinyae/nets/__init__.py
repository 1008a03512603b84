"""The networks: the layer declaration, the blocks, configurations, the variants (typed data) and the network class.
Imports only torch and each other."""
