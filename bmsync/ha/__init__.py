"""The HA companion: the moves the BlueMind HA guide asks of "the HA
handling system" (floating IP, storage, fencing), and what the guard
observes of them."""
