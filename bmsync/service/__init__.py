"""Running as a system service: the control socket, sd_notify, logging."""
