"""The passive node's side: the agent a forced SSH command starts, which
applies a sender's frames inside its root and nothing outside it."""
