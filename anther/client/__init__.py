"""Client side: the ClientApp, the NanoEdge, the local trainer and the backbone client."""
