"""Analytics to Mixpanel: its client (`client`), the request that sends a batch of
deliveries (`sender`) and the batching itself: which deliveries wait, which flush takes
them (`batches`)."""
