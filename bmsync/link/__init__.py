"""The link to the peer: the SSH transport, the session speaking the
protocol over it, and the frames a local file is sent as."""
