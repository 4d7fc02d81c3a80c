"""SMS through Twilio: its client (`client`), the sender of one delivery (`sender`), how
its message statuses read as delivery statuses (`statuses`) and its status callback
(`views`)."""
