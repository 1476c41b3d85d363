"""The data: raw splits from the hub or a local folder (prepare only), and the prepared Parquet splits."""
