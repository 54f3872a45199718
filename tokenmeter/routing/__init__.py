"""Cost-aware routing's shared core: the policy's routing rules and the apps' intent classification."""
